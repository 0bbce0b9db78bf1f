#!/usr/bin/env node
// Drive the digits page (examples/web) in a real Chromium with playwright-core: load it, check
// every sample digit's prediction against the Python reader's, draw on the canvas with the
// mouse, reload and read what the second load fetched, and save a screenshot. Prints JSON.
//
//   node tools/browser_check.mjs PAGE_URL SCREENSHOT.png [--chromium /usr/bin/chromium]

import { chromium } from 'playwright-core';

const [pageUrl, screenshot, ...rest] = process.argv.slice(2);
const executablePath = rest[0] === '--chromium' ? rest[1] : process.env.CHROMIUM ?? '/usr/bin/chromium';
const browser = await chromium.launch({ executablePath, headless: true, args: ['--no-sandbox', '--disable-gpu'] });
const report = {};
try {
  const context = await browser.newContext({ viewport: { width: 1000, height: 820 } });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (err) => errors.push(String(err)));
  const ready = async () => {
    await page.waitForFunction(() => window.kformatDemo && (window.kformatDemo.ready || window.kformatDemo.error), null, { timeout: 60000 });
    const state = await page.evaluate(() => ({ ...window.kformatDemo, classify: undefined, classifyCanvas: undefined }));
    if (state.error) throw new Error(`the page failed: ${state.error}`);
    return state;
  };
  await page.goto(pageUrl);
  report.first = await ready();
  const samples = await (await fetch(new URL('samples.json', pageUrl))).json();
  report.samples = await page.evaluate((list) => list.map((s) => window.kformatDemo.classify(s.pixels)), samples.samples);
  report.expected = samples.samples.map((s) => s.predicted);
  // A stroke drawn with the mouse: a vertical bar, which the page classifies.
  const box = await page.locator('#pad').boundingBox();
  await page.mouse.move(box.x + box.width * 0.5, box.y + box.height * 0.15);
  await page.mouse.down();
  for (let i = 1; i <= 12; i++) await page.mouse.move(box.x + box.width * 0.5, box.y + box.height * (0.15 + (0.7 * i) / 12));
  await page.mouse.up();
  report.drawn = await page.evaluate(() => window.kformatDemo.lastDrawn);
  await page.reload();
  report.second = await ready();
  await page.locator('#samples button').first().click();
  report.shown = await page.locator('#prediction').textContent();
  await page.screenshot({ path: screenshot, fullPage: true });
  report.errors = errors;
  report.chromium = browser.version();
} finally {
  await browser.close();
}
console.log(JSON.stringify(report));
