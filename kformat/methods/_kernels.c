/* The fits' inner loops in C: kernels_numba's loops, loaded in a millisecond instead of the
 * third of a second numba's start costs, and run without the GIL.
 *
 * Each function does the arithmetic of its numba twin (kernels_numba, fit_loops) in the same
 * order, every product and quotient rounded on its own (built with -ffp-contract=off, never
 * fast-math), so all three give the same floats; tests/test_kernels.py compares them. The
 * Python side (kernels_c.py) checks the arrays' types and shapes and allocates the outputs;
 * this file checks the buffers' lengths again before it reads or writes them.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define STACK 512 /* pending halves of a layer's divide and conquer: about 2 log2(points) */
#define LENGTH_STEPS 1024.0

typedef struct {
    Py_buffer view;
    int held;
} Buffer;

static void release(Buffer *b, int count) {
    for (int i = 0; i < count; i++) {
        if (b[i].held) {
            PyBuffer_Release(&b[i].view);
            b[i].held = 0;
        }
    }
}

/* The buffer of `obj`, C-contiguous, of at least `items` items of `size` bytes. */
static int take(PyObject *obj, Buffer *b, int writable, Py_ssize_t items, Py_ssize_t size, const char *what) {
    int flags = PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, &b->view, flags) < 0)
        return -1;
    b->held = 1;
    if (b->view.len < items * size || b->view.len % size) {
        PyErr_Format(PyExc_ValueError, "%s: %zd bytes, expected at least %zd", what, b->view.len, items * size);
        return -1;
    }
    return 0;
}

/* The `count` arguments of a call that takes objects only. */
static int objects(PyObject *args, PyObject **o, Py_ssize_t count, const char *name) {
    if (!PyTuple_Check(args) || PyTuple_GET_SIZE(args) != count) {
        PyErr_Format(PyExc_TypeError, "%s takes %zd arguments", name, count);
        return -1;
    }
    for (Py_ssize_t i = 0; i < count; i++)
        o[i] = PyTuple_GET_ITEM(args, i);
    return 0;
}

#define DOUBLES(b) ((double *)(b).view.buf)
#define INTS(b) ((int64_t *)(b).view.buf)
#define COUNT(b, type) ((b).view.len / (Py_ssize_t)sizeof(type))

/* kmeans_dp._cost_to of one pair: the squared error of points i..j-1 around their mean. */
static inline double cost_to(const double *w, const double *s1, const double *s2, int64_t i, double wj,
                             double s1j, double s2j) {
    double dw = wj - w[i];
    double d1 = s1j - s1[i];
    d1 *= d1;
    d1 = dw > 0 ? d1 / dw : 0.0;
    double cost = s2j - s2[i];
    cost -= d1;
    return (cost > 0.0 || cost != cost) ? cost : 0.0; /* np.maximum(cost, 0): NaN stays */
}

/* The DP's inner loop from i = first on, given the lowest value so far and where: each
 * previous[i] + cost_to(.., i, ..) up to last that is lower takes their place. */
static inline void scan_on(const double *previous, const double *w, const double *s1, const double *s2, int64_t first,
                           int64_t last, double wj, double s1j, double s2j, double *lowest, int64_t *chosen) {
    for (int64_t i = first; i <= last; i++) {
        double value = previous[i] + cost_to(w, s1, s2, i, wj, s1j, s2j);
        if (value < *lowest)
            *lowest = value, *chosen = i;
    }
}

/* The lowest of previous[i] + cost_to(.., i, ..) over i = first..last and the first i that
 * gives it, as a loop of `value < lowest` from i = first finds them (a NaN at first stays;
 * later NaNs never win). */
static void scan_plain(const double *previous, const double *w, const double *s1, const double *s2, int64_t first,
                       int64_t last, double wj, double s1j, double s2j, double *lowest, int64_t *chosen) {
    *lowest = previous[first] + cost_to(w, s1, s2, first, wj, s1j, s2j), *chosen = first;
    scan_on(previous, w, s1, s2, first + 1, last, wj, s1j, s2j, lowest, chosen);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HAVE_AVX2_PATH 1

/* scan_plain four values at a time: each lane computes cost_to's operations in its order
 * (the same roundings, so the same values) and keeps its own lowest and first index; the
 * lanes then give the lowest value and, among equals, the first index, and the loop goes on
 * from there one value at a time. */
__attribute__((target("avx2"))) static void scan_avx2(const double *previous, const double *w, const double *s1,
                                                     const double *s2, int64_t first, int64_t last, double wj,
                                                     double s1j, double s2j, double *lowest, int64_t *chosen) {
    double low = previous[first] + cost_to(w, s1, s2, first, wj, s1j, s2j);
    int64_t at = first, i = first + 1;
    if (low == low && last - i >= 7) {
        const __m256d zero = _mm256_setzero_pd(), vw = _mm256_set1_pd(wj), v1 = _mm256_set1_pd(s1j),
                      v2 = _mm256_set1_pd(s2j);
        __m256d best = _mm256_set1_pd(low);
        __m256i where = _mm256_set1_epi64x(at), index = _mm256_setr_epi64x(i, i + 1, i + 2, i + 3);
        const __m256i four = _mm256_set1_epi64x(4);
        for (; i + 3 <= last; i += 4) {
            __m256d dw = _mm256_sub_pd(vw, _mm256_loadu_pd(w + i));
            __m256d d1 = _mm256_sub_pd(v1, _mm256_loadu_pd(s1 + i));
            d1 = _mm256_mul_pd(d1, d1);
            d1 = _mm256_blendv_pd(zero, _mm256_div_pd(d1, dw), _mm256_cmp_pd(dw, zero, _CMP_GT_OQ));
            __m256d cost = _mm256_sub_pd(_mm256_sub_pd(v2, _mm256_loadu_pd(s2 + i)), d1);
            __m256d kept = _mm256_or_pd(_mm256_cmp_pd(cost, zero, _CMP_GT_OQ), _mm256_cmp_pd(cost, cost, _CMP_UNORD_Q));
            __m256d value = _mm256_add_pd(_mm256_loadu_pd(previous + i), _mm256_blendv_pd(zero, cost, kept));
            __m256d less = _mm256_cmp_pd(value, best, _CMP_LT_OQ);
            best = _mm256_blendv_pd(best, value, less);
            where = _mm256_castpd_si256(
                _mm256_blendv_pd(_mm256_castsi256_pd(where), _mm256_castsi256_pd(index), less));
            index = _mm256_add_epi64(index, four);
        }
        double lanes[4];
        int64_t places[4];
        _mm256_storeu_pd(lanes, best);
        _mm256_storeu_si256((__m256i *)places, where);
        for (int l = 0; l < 4; l++)
            if (lanes[l] < low || (lanes[l] == low && places[l] < at))
                low = lanes[l], at = places[l];
    }
    *lowest = low, *chosen = at;
    scan_on(previous, w, s1, s2, i, last, wj, s1j, s2j, lowest, chosen);
}
#endif

/* The widest vectors the loops may use: 0 none, 1 AVX2 (with FMA), 2 AVX-512; at import the
 * processor's, lowered by set_vectors (tests run every path on one machine). */
static int vectors = 0, processor_vectors = 0;

static void scan(const double *previous, const double *w, const double *s1, const double *s2, int64_t first,
                 int64_t last, double wj, double s1j, double s2j, double *lowest, int64_t *chosen) {
#ifdef HAVE_AVX2_PATH
    if (vectors >= 1) {
        scan_avx2(previous, w, s1, s2, first, last, wj, s1j, s2j, lowest, chosen);
        return;
    }
#endif
    scan_plain(previous, w, s1, s2, first, last, wj, s1j, s2j, lowest, chosen);
}

/* kmeans_dp._layer for one problem, depth first; 0, or -1 if the stack would overflow. */
static int layer_of(const double *previous, double *best, int64_t *split, int64_t jl, int64_t jr, int64_t ol,
                    int64_t orr, const double *w, const double *s1, const double *s2, const int64_t *floor,
                    int has_floor) {
    int64_t stack[STACK][4];
    int top = 1;
    stack[0][0] = jl, stack[0][1] = jr, stack[0][2] = ol, stack[0][3] = orr;
    while (top) {
        top -= 1;
        int64_t a = stack[top][0], b = stack[top][1], lo0 = stack[top][2], hi0 = stack[top][3];
        if (a > b)
            continue;
        int64_t mid = (a + b) / 2;
        int64_t hi = hi0 < mid - 1 ? hi0 : mid - 1;
        int64_t lo = lo0;
        if (has_floor) {
            lo = lo0 > floor[mid] ? lo0 : floor[mid];
            lo = lo < hi ? lo : hi;
        }
        double lowest;
        int64_t chosen;
        scan(previous, w, s1, s2, lo, hi, w[mid], s1[mid], s2[mid], &lowest, &chosen);
        best[mid] = lowest, split[mid] = chosen;
        if (top + 2 > STACK)
            return -1;
        stack[top][0] = mid + 1, stack[top][1] = b, stack[top][2] = chosen, stack[top][3] = hi0;
        stack[top + 1][0] = a, stack[top + 1][1] = mid - 1, stack[top + 1][2] = lo0, stack[top + 1][3] = chosen;
        top += 2;
    }
    return 0;
}

/* dp_extend(layer, w, s1, s2, base, sizes, chosen, m_from, m_to, floor, has_floor,
 *           out_layer, splits, errors): kernels_numba.dp_extend, its results written into
 * out_layer (the last layer), splits [count, layer size] and errors [count, problems]
 * (zeros and inf on entry). */
static PyObject *dp_extend(PyObject *self, PyObject *args) {
    PyObject *result = NULL;
    PyObject *o[14];
    long long m_from, m_to;
    int has_floor;
    Buffer b[12] = {0};
    if (!PyArg_ParseTuple(args, "OOOOOOOLLOpOOO", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6], &m_from,
                          &m_to, &o[9], &has_floor, &o[11], &o[12], &o[13]))
        return NULL;
    Py_ssize_t size, problems, count = m_to - m_from + 1;
    int bad = 0;
    if (take(o[0], &b[0], 0, 1, 8, "layer") < 0)
        goto done;
    size = COUNT(b[0], double);
    if (take(o[1], &b[1], 0, size, 8, "w") < 0 || take(o[2], &b[2], 0, size, 8, "s1") < 0 ||
        take(o[3], &b[3], 0, size, 8, "s2") < 0 || take(o[4], &b[4], 0, 0, 8, "base") < 0)
        goto done;
    problems = COUNT(b[4], int64_t);
    if (take(o[5], &b[5], 0, problems, 8, "sizes") < 0 || take(o[6], &b[6], 0, 0, 8, "chosen") < 0 ||
        take(o[9], &b[7], 0, has_floor ? size : 0, 8, "floor") < 0 ||
        take(o[11], &b[8], 1, size, 8, "out_layer") < 0 ||
        take(o[12], &b[9], 1, count > 0 ? count * size : 0, 8, "splits") < 0 ||
        take(o[13], &b[10], 1, count > 0 ? count * problems : 0, 8, "errors") < 0)
        goto done;
    {
        const double *w = DOUBLES(b[1]), *s1 = DOUBLES(b[2]), *s2 = DOUBLES(b[3]);
        const int64_t *base = INTS(b[4]), *sizes = INTS(b[5]), *chosen = INTS(b[6]);
        Py_ssize_t picked = COUNT(b[6], int64_t);
        for (Py_ssize_t c = 0; c < picked; c++) {
            int64_t g = chosen[c];
            if (g < 0 || g >= problems || base[g] < 0 || sizes[g] < 0 || base[g] + sizes[g] >= size) {
                PyErr_SetString(PyExc_ValueError, "dp_extend: a chosen problem lies outside the layer");
                goto done;
            }
        }
        double *current = PyMem_RawMalloc(size * sizeof(double)), *best = PyMem_RawMalloc(size * sizeof(double));
        if (!current || !best) {
            PyMem_RawFree(current), PyMem_RawFree(best);
            PyErr_NoMemory();
            goto done;
        }
        memcpy(current, DOUBLES(b[0]), size * sizeof(double));
        int64_t *splits = INTS(b[9]);
        double *errors = DOUBLES(b[10]);
        const int64_t *floor = INTS(b[7]);
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t step = 0; step < count && !bad; step++) {
            int64_t m = m_from + step;
            for (Py_ssize_t j = 0; j < size; j++)
                best[j] = INFINITY;
            for (Py_ssize_t c = 0; c < picked && !bad; c++) {
                int64_t g = chosen[c], n = sizes[g], at = base[g];
                if (n < m)
                    continue;
                bad = layer_of(current, best, splits + step * size, at + m, at + n, at + m - 1, at + n - 1, w, s1, s2,
                               floor, has_floor);
                errors[step * problems + g] = best[at + n];
            }
            double *swap = current;
            current = best, best = swap;
            floor = splits + step * size, has_floor = 1;
        }
        Py_END_ALLOW_THREADS
        memcpy(DOUBLES(b[8]), current, size * sizeof(double));
        PyMem_RawFree(current), PyMem_RawFree(best);
        if (bad) {
            PyErr_SetString(PyExc_RuntimeError, "dp_extend: divide and conquer ran past its stack");
            goto done;
        }
    }
    result = Py_NewRef(Py_None);
done:
    release(b, 12);
    return result;
}

/* dp_dense(first, w, s1, s2, k, out_layer, splits, ends): kernels_numba.dp_dense into
 * out_layer [size], splits [k - 1, size] (zeros) and ends [k - 1]. */
static PyObject *dp_dense(PyObject *self, PyObject *args) {
    PyObject *result = NULL;
    PyObject *o[8];
    long long k;
    Buffer b[8] = {0};
    if (!PyArg_ParseTuple(args, "OOOOLOOO", &o[0], &o[1], &o[2], &o[3], &k, &o[5], &o[6], &o[7]))
        return NULL;
    Py_ssize_t size, rows = k > 1 ? k - 1 : 0;
    if (take(o[0], &b[0], 0, 1, 8, "first") < 0)
        goto done;
    size = COUNT(b[0], double);
    if (take(o[1], &b[1], 0, size, 8, "w") < 0 || take(o[2], &b[2], 0, size, 8, "s1") < 0 ||
        take(o[3], &b[3], 0, size, 8, "s2") < 0 || take(o[5], &b[5], 1, size, 8, "out_layer") < 0 ||
        take(o[6], &b[6], 1, rows * size, 8, "splits") < 0 || take(o[7], &b[7], 1, rows, 8, "ends") < 0)
        goto done;
    {
        const double *w = DOUBLES(b[1]), *s1 = DOUBLES(b[2]), *s2 = DOUBLES(b[3]);
        double *layer = DOUBLES(b[5]), *ends = DOUBLES(b[7]);
        int64_t *splits = INTS(b[6]);
        double *best = PyMem_RawMalloc(size * sizeof(double));
        if (!best) {
            PyErr_NoMemory();
            goto done;
        }
        memcpy(layer, DOUBLES(b[0]), size * sizeof(double));
        layer[0] = INFINITY; /* one cluster over no points */
        Py_BEGIN_ALLOW_THREADS
        for (int64_t m = 2; m <= k; m++) {
            best[0] = INFINITY, splits[(m - 2) * size] = 0;
            for (Py_ssize_t j = 1; j < size; j++) {
                double lowest;
                int64_t chosen;
                scan(layer, w, s1, s2, 0, j - 1, w[j], s1[j], s2[j], &lowest, &chosen);
                best[j] = lowest, splits[(m - 2) * size + j] = chosen;
            }
            for (Py_ssize_t j = 0; j < m && j < size; j++)
                best[j] = INFINITY; /* j < m points cannot fill m clusters */
            ends[m - 2] = best[size - 1];
            memcpy(layer, best, size * sizeof(double));
        }
        Py_END_ALLOW_THREADS
        PyMem_RawFree(best);
    }
    result = Py_NewRef(Py_None);
done:
    release(b, 8);
    return result;
}

/* numpy's float order for searchsorted: NaN after every number. */
static inline int less(double a, double b) { return a < b || (b != b && a == a); }

/* np.searchsorted(points, edge, side="right"): the first index whose point is above edge. */
static inline int64_t above(const double *points, int64_t n, double edge) {
    int64_t lo = 0, hi = n;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (less(edge, points[mid]))
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

/* fit_loops.cell_moments: each cell's (weight, sum) between `edges` (ne of them). */
static void cell_moments(const double *points, int64_t n, const double *w_wp, const double *edges, int64_t ne,
                         double *counts, double *moments) {
    int64_t previous = 0;
    for (int64_t e = 0; e <= ne; e++) {
        int64_t next = e < ne ? above(points, n, edges[e]) : n;
        counts[e] = w_wp[2 * next] - w_wp[2 * previous];
        moments[e] = w_wp[2 * next + 1] - w_wp[2 * previous + 1];
        previous = next;
    }
}

/* max |a - b| <= tol, as numpy's max says it (a NaN makes it false). */
static int within(const double *a, const double *b, int64_t n, double tol) {
    double largest = -INFINITY;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs(a[i] - b[i]);
        if (d != d)
            return 0;
        if (d > largest)
            largest = d;
    }
    return largest <= tol;
}

/* lloyd(points, w_wp, centroids, iters, tol, out): fit_loops.lloyd_iterations, the final
 * centroids written into out (as large as centroids); their count. */
static PyObject *lloyd(PyObject *self, PyObject *args) {
    PyObject *result = NULL;
    PyObject *o[6];
    long long iters;
    double tol;
    Buffer b[6] = {0};
    if (!PyArg_ParseTuple(args, "OOOLdO", &o[0], &o[1], &o[2], &iters, &tol, &o[5]))
        return NULL;
    Py_ssize_t n, k;
    if (take(o[0], &b[0], 0, 0, 8, "points") < 0)
        goto done;
    n = COUNT(b[0], double);
    if (take(o[1], &b[1], 0, 2 * (n + 1), 8, "w_wp") < 0 || take(o[2], &b[2], 0, 0, 8, "centroids") < 0)
        goto done;
    k = COUNT(b[2], double);
    if (take(o[5], &b[5], 1, k, 8, "out") < 0)
        goto done;
    {
        double *work = PyMem_RawMalloc((4 * k + 1) * sizeof(double));
        if (!work) {
            PyErr_NoMemory();
            goto done;
        }
        double *c = work, *edges = work + k, *counts = work + 2 * k, *moments = work + 3 * k;
        const double *points = DOUBLES(b[0]), *w_wp = DOUBLES(b[1]);
        memcpy(c, DOUBLES(b[2]), k * sizeof(double));
        Py_BEGIN_ALLOW_THREADS
        for (long long it = 0; it < iters; it++) {
            if (k < 2)
                break;
            for (Py_ssize_t e = 0; e + 1 < k; e++)
                edges[e] = (c[e] + c[e + 1]) / 2.0;
            cell_moments(points, n, w_wp, edges, k - 1, counts, moments);
            int all = 1, converged;
            for (Py_ssize_t i = 0; i < k; i++)
                all &= counts[i] != 0;
            if (all) {
                for (Py_ssize_t i = 0; i < k; i++)
                    moments[i] = moments[i] / counts[i];
                converged = within(moments, c, k, tol);
                memcpy(c, moments, k * sizeof(double));
            } else { /* empty cells are dropped */
                Py_ssize_t kept = 0;
                for (Py_ssize_t i = 0; i < k; i++)
                    if (counts[i] > 0)
                        c[kept++] = moments[i] / counts[i];
                k = kept;
                converged = 0;
            }
            if (converged)
                break;
        }
        Py_END_ALLOW_THREADS
        memcpy(DOUBLES(b[5]), c, k * sizeof(double));
        PyMem_RawFree(work);
    }
    result = PyLong_FromSsize_t(k);
done:
    release(b, 6);
    return result;
}

/* fit_loops.code_lengths in place: -log2 of each share, rounded to 1/1024 of a bit (the C
 * library's log2, as numba's and the numpy loops' midpoint cases take). */
static void code_lengths(double *shares, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        double steps = -log2(shares[i]) * LENGTH_STEPS;
        double rounded = nearbyint(steps);
        shares[i] = rounded / LENGTH_STEPS;
    }
}

/* fit_loops.every_line_owns into edges (n - 1): whether every line owns a cell. */
static int every_line_owns(const double *c, const double *lengths, int64_t n, double lam, double *edges,
                           double *scratch) {
    if (n < 2)
        return 0;
    double *offsets = scratch;
    for (int64_t i = 0; i < n; i++)
        offsets[i] = c[i] * c[i] + lam * lengths[i];
    for (int64_t i = 0; i + 1 < n; i++) {
        double gap = -2.0 * c[i] - -2.0 * c[i + 1];
        if (!(gap > 0))
            return 0;
        edges[i] = (offsets[i + 1] - offsets[i]) / gap;
    }
    for (int64_t i = 0; i + 2 < n; i++)
        if (!(edges[i + 1] > edges[i]))
            return 0;
    return -INFINITY < edges[0] && edges[n - 2] < INFINITY;
}

/* ec(points, w_wp, centroids, lengths, lam, iters, tol, total, out_c, out_lengths):
 * fit_loops.ec_iterations into out_c and out_lengths (as large as centroids); (count,
 * iterations done, finished). */
static PyObject *ec(PyObject *self, PyObject *args) {
    PyObject *result = NULL;
    PyObject *o[10];
    double lam, tol, total;
    long long iters;
    Buffer b[10] = {0};
    if (!PyArg_ParseTuple(args, "OOOOdLddOO", &o[0], &o[1], &o[2], &o[3], &lam, &iters, &tol, &total, &o[8], &o[9]))
        return NULL;
    Py_ssize_t n, k;
    long long done = iters;
    int finished = 1;
    if (take(o[0], &b[0], 0, 0, 8, "points") < 0)
        goto done;
    n = COUNT(b[0], double);
    if (take(o[1], &b[1], 0, 2 * (n + 1), 8, "w_wp") < 0 || take(o[2], &b[2], 0, 0, 8, "centroids") < 0)
        goto done;
    k = COUNT(b[2], double);
    if (take(o[3], &b[3], 0, k, 8, "lengths") < 0 || take(o[8], &b[8], 1, k, 8, "out_c") < 0 ||
        take(o[9], &b[9], 1, k, 8, "out_lengths") < 0)
        goto done;
    {
        double *work = PyMem_RawMalloc((6 * k + 1) * sizeof(double));
        if (!work) {
            PyErr_NoMemory();
            goto done;
        }
        double *c = work, *lengths = work + k, *edges = work + 2 * k, *counts = work + 3 * k;
        double *moments = work + 4 * k, *scratch = work + 5 * k;
        const double *points = DOUBLES(b[0]), *w_wp = DOUBLES(b[1]);
        memcpy(c, DOUBLES(b[2]), k * sizeof(double));
        memcpy(lengths, DOUBLES(b[3]), k * sizeof(double));
        Py_BEGIN_ALLOW_THREADS
        for (long long it = 0; it < iters; it++) {
            if (!every_line_owns(c, lengths, k, lam, edges, scratch)) {
                done = it, finished = 0;
                break;
            }
            cell_moments(points, n, w_wp, edges, k - 1, counts, moments);
            Py_ssize_t kept = 0;
            for (Py_ssize_t i = 0; i < k; i++)
                if (counts[i] > 0) {
                    moments[kept] = moments[i] / counts[i];
                    scratch[kept] = counts[i] / total;
                    kept++;
                }
            code_lengths(scratch, kept);
            int converged = kept == k && within(moments, c, k, tol);
            memcpy(c, moments, kept * sizeof(double));
            memcpy(lengths, scratch, kept * sizeof(double));
            k = kept;
            if (converged) {
                done = it + 1;
                break;
            }
        }
        Py_END_ALLOW_THREADS
        memcpy(DOUBLES(b[8]), c, k * sizeof(double));
        memcpy(DOUBLES(b[9]), lengths, k * sizeof(double));
        PyMem_RawFree(work);
    }
    result = Py_BuildValue("nLO", k, done, finished ? Py_True : Py_False);
done:
    release(b, 10);
    return result;
}

/* bins(index, weights or None, out): kernels_numba.count_bins (out int64) or sum_bins (out
 * float64) into out (zeros); False when an index falls outside out. */
static PyObject *bins(PyObject *self, PyObject *args) {
    PyObject *result = NULL;
    PyObject *o[3];
    Buffer b[3] = {0};
    if (objects(args, o, 3, "bins") < 0)
        return NULL;
    int weighted = o[1] != Py_None, ok = 1;
    Py_ssize_t n, size;
    if (take(o[0], &b[0], 0, 0, 4, "index") < 0)
        goto done;
    n = COUNT(b[0], int32_t);
    if ((weighted && take(o[1], &b[1], 0, n, 8, "weights") < 0) || take(o[2], &b[2], 1, 0, 8, "out") < 0)
        goto done;
    size = COUNT(b[2], int64_t);
    {
        const int32_t *index = (const int32_t *)b[0].view.buf;
        Py_BEGIN_ALLOW_THREADS
        if (weighted) {
            const double *weights = DOUBLES(b[1]);
            double *out = DOUBLES(b[2]);
            for (Py_ssize_t i = 0; i < n; i++) {
                int32_t k = index[i];
                if (k < 0 || k >= size) {
                    ok = 0;
                    break;
                }
                out[k] += weights[i];
            }
        } else {
            int64_t *out = INTS(b[2]);
            for (Py_ssize_t i = 0; i < n; i++) {
                int32_t k = index[i];
                if (k < 0 || k >= size) {
                    ok = 0;
                    break;
                }
                out[k] += 1;
            }
        }
        Py_END_ALLOW_THREADS
    }
    result = PyBool_FromLong(ok);
done:
    release(b, 3);
    return result;
}

/* One row of linear_rows: codes, back and counts (four tallies, summed by the caller, so that
 * a run of equal codes does not wait on one counter). */
static void linear_row_plain(const float *x, Py_ssize_t cols, float s, float z, float top, uint8_t *codes, float *back,
                             int64_t (*tally)[256]) {
    for (Py_ssize_t c = 0; c < cols; c++) {
        float q = nearbyintf(x[c] / s) + z;
        q = q < 0.0f ? 0.0f : (q > top ? top : q);
        codes[c] = (uint8_t)q;
        tally[c & 3][codes[c]] += 1;
        back[c] = (q - z) * s;
    }
}

#ifdef HAVE_AVX2_PATH
/* The same, sixteen values at a time with AVX-512: the quotient rounded half to even
 * (roundscale, as nearbyintf), the clip as compares that keep q where it equals a bound. */
__attribute__((target("avx512f"))) static void linear_row_512(const float *x, Py_ssize_t cols, float s, float z,
                                                             float top, uint8_t *codes, float *back,
                                                             int64_t (*tally)[256]) {
    const __m512 vs = _mm512_set1_ps(s), vz = _mm512_set1_ps(z), zero = _mm512_setzero_ps(), vtop = _mm512_set1_ps(top);
    Py_ssize_t c = 0;
    for (; c + 16 <= cols; c += 16) {
        __m512 q = _mm512_roundscale_ps(_mm512_div_ps(_mm512_loadu_ps(x + c), vs), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        q = _mm512_add_ps(q, vz);
        q = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(q, zero, _CMP_LT_OQ), q, zero);
        q = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(q, vtop, _CMP_GT_OQ), q, vtop);
        _mm_storeu_si128((__m128i *)(codes + c), _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(q)));
        _mm512_storeu_ps(back + c, _mm512_mul_ps(_mm512_sub_ps(q, vz), vs));
        for (int l = 0; l < 16; l++)
            tally[l & 3][codes[c + l]] += 1;
    }
    linear_row_plain(x + c, cols - c, s, z, top, codes + c, back + c, tally);
}
#endif

/* linear_rows(x, cols, group_rows, first_row, scale, zero_point, levels, codes, back, counts):
 * linear._linear_codes and what rows_of makes of them, in one pass: for each value of the
 * rows x (rows x cols, float32; row r of group (first_row + r) / group_rows), q = x / scale
 * rounded half to even, plus the zero point, clipped to [0, levels]; codes = q, back =
 * (q - zero point) * scale, counts[code] += 1. Each operation in float32 as numpy does it,
 * one rounding each, so the same codes and the same back to the bit. */
static PyObject *linear_rows(PyObject *self, PyObject *args) {
    PyObject *result = NULL;
    PyObject *o[10];
    Py_ssize_t cols, group_rows, first_row;
    int levels;
    Buffer b[10] = {0};
    if (!PyArg_ParseTuple(args, "OnnnOOiOOO", &o[0], &cols, &group_rows, &first_row, &o[4], &o[5], &levels, &o[7],
                          &o[8], &o[9]))
        return NULL;
    if (cols < 1 || group_rows < 1 || first_row < 0 || levels < 1 || levels > 255) {
        PyErr_SetString(PyExc_ValueError, "linear_rows: bad shape or levels");
        return NULL;
    }
    if (take(o[0], &b[0], 0, 0, 4, "x") < 0)
        goto done;
    Py_ssize_t n = COUNT(b[0], float), rows = n / cols;
    Py_ssize_t groups = rows ? (first_row + rows - 1) / group_rows + 1 : 0;
    if (n % cols || take(o[4], &b[4], 0, groups, 4, "scale") < 0 || take(o[5], &b[5], 0, groups, 4, "zero_point") < 0 ||
        take(o[7], &b[7], 1, n, 1, "codes") < 0 || take(o[8], &b[8], 1, n, 4, "back") < 0 ||
        take(o[9], &b[9], 1, levels + 1, 8, "counts") < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "linear_rows: x is not whole rows");
        goto done;
    }
    {
        const float *x = (const float *)b[0].view.buf, *scale = (const float *)b[4].view.buf,
                    *zero = (const float *)b[5].view.buf;
        uint8_t *codes = (uint8_t *)b[7].view.buf;
        float *back = (float *)b[8].view.buf, top = (float)levels;
        int64_t *counts = INTS(b[9]);
        int64_t(*tally)[256] = PyMem_RawCalloc(4, sizeof *tally);
        if (!tally) {
            PyErr_NoMemory();
            goto done;
        }
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t r = 0; r < rows; r++) {
            Py_ssize_t g = (first_row + r) / group_rows, at = r * cols;
#ifdef HAVE_AVX2_PATH
            if (vectors >= 2) {
                linear_row_512(x + at, cols, scale[g], zero[g], top, codes + at, back + at, tally);
                continue;
            }
#endif
            linear_row_plain(x + at, cols, scale[g], zero[g], top, codes + at, back + at, tally);
        }
        for (int k = 0; k <= levels; k++)
            counts[k] += tally[0][k] + tally[1][k] + tally[2][k] + tally[3][k];
        Py_END_ALLOW_THREADS
        PyMem_RawFree(tally);
    }
    result = Py_NewRef(Py_None);
done:
    release(b, 10);
    return result;
}

/* bin_floats(values, lo, scale, out): histogram._bin_index and the count of its bins in one
 * pass, for float32 values: (v - lo) * scale in float32 (each rounded as numpy rounds it),
 * capped at the last bin, truncated; out[bin] += 1 (int64, `bins` of them). False (counts
 * partly added) where a value falls outside (below lo, or NaN): the caller recounts. */
static PyObject *bin_floats(PyObject *self, PyObject *args) {
    PyObject *result = NULL;
    PyObject *o[4];
    float lo, scale;
    Buffer b[4] = {0};
    if (!PyArg_ParseTuple(args, "OffO", &o[0], &lo, &scale, &o[3]))
        return NULL;
    if (take(o[0], &b[0], 0, 0, 4, "values") < 0 || take(o[3], &b[3], 1, 1, 8, "out") < 0)
        goto done;
    {
        const float *values = (const float *)b[0].view.buf;
        Py_ssize_t n = COUNT(b[0], float), bins = COUNT(b[3], int64_t);
        int64_t *out = INTS(b[3]);
        float last = (float)(bins - 1);
        int ok = 1;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < n; i++) {
            float s = (values[i] - lo) * scale;
            s = s > last ? last : s; /* np.minimum (a NaN stays, and fails the check below) */
            if (!(s >= 0.0f)) {
                ok = 0;
                break;
            }
            out[(int32_t)s] += 1;
        }
        Py_END_ALLOW_THREADS
        result = PyBool_FromLong(ok);
    }
done:
    release(b, 4);
    return result;
}

/* prefix_sums(points, weights, out): kernels_numba.prefix_sums. */
static PyObject *prefix_sums(PyObject *self, PyObject *args) {
    PyObject *result = NULL;
    PyObject *o[3];
    Buffer b[3] = {0};
    if (objects(args, o, 3, "prefix_sums") < 0)
        return NULL;
    Py_ssize_t n;
    if (take(o[0], &b[0], 0, 0, 8, "points") < 0)
        goto done;
    n = COUNT(b[0], double);
    if (take(o[1], &b[1], 0, n, 8, "weights") < 0 || take(o[2], &b[2], 1, 2 * (n + 1), 8, "out") < 0)
        goto done;
    {
        const double *points = DOUBLES(b[0]), *weights = DOUBLES(b[1]);
        double *out = DOUBLES(b[2]);
        Py_BEGIN_ALLOW_THREADS
        double total = 0.0, moment = 0.0;
        for (Py_ssize_t i = 0; i < n; i++) {
            total += weights[i];
            double product = weights[i] * points[i];
            moment += product;
            out[2 * (i + 1)] = total;
            out[2 * (i + 1) + 1] = moment;
        }
        Py_END_ALLOW_THREADS
    }
    result = Py_NewRef(Py_None);
done:
    release(b, 3);
    return result;
}

/* top_codes(values, below, inside, out): kmeans_codes' top-half lookup in one pass: each
 * float32's code is below[top 16 bits] + (value > inside[top 16 bits]); below is uint8,
 * inside float32, both 2^16 long. */
static PyObject *top_codes(PyObject *self, PyObject *args) {
    PyObject *result = NULL;
    PyObject *o[4];
    Buffer b[4] = {0};
    if (objects(args, o, 4, "top_codes") < 0)
        return NULL;
    Py_ssize_t n;
    if (take(o[0], &b[0], 0, 0, 4, "values") < 0)
        goto done;
    n = COUNT(b[0], float);
    if (take(o[1], &b[1], 0, 1 << 16, 1, "below") < 0 || take(o[2], &b[2], 0, 1 << 16, 4, "inside") < 0 ||
        take(o[3], &b[3], 1, n, 1, "out") < 0)
        goto done;
    {
        const float *values = (const float *)b[0].view.buf, *inside = (const float *)b[2].view.buf;
        const uint8_t *below = (const uint8_t *)b[1].view.buf;
        uint8_t *out = (uint8_t *)b[3].view.buf;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < n; i++) {
            float v = values[i];
            uint32_t bits;
            memcpy(&bits, &v, 4);
            uint32_t top = bits >> 16;
            out[i] = (uint8_t)(below[top] + (v > inside[top]));
        }
        Py_END_ALLOW_THREADS
    }
    result = Py_NewRef(Py_None);
done:
    release(b, 4);
    return result;
}

/* Codes of n values by ne sorted edges (more than 16): a grid over the edges' range says
 * about how many edges lie below a value, and compares move that count to the exact one
 * (so the grid's rounding never matters); values outside the range take 0 or ne. */
static void grid_codes(const float *values, Py_ssize_t n, const float *edges, Py_ssize_t ne, uint8_t *out,
                       uint16_t *grid, Py_ssize_t cells) {
    double lo = edges[0], hi = edges[ne - 1], scale = cells / (hi - lo);
    Py_ssize_t below = 0;
    for (Py_ssize_t g = 0; g < cells; g++) {
        double start = lo + (hi - lo) * g / cells;
        while (below < ne && edges[below] < start)
            below++;
        grid[g] = (uint16_t)below;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        float v = values[i];
        if (!(v > edges[0])) { /* (NaN too: above no edge) */
            out[i] = 0;
            continue;
        }
        if (v > edges[ne - 1]) {
            out[i] = (uint8_t)ne;
            continue;
        }
        double at = (v - lo) * scale;
        Py_ssize_t g = at < 0 ? 0 : (at >= cells ? cells - 1 : (Py_ssize_t)at);
        Py_ssize_t c = grid[g];
        while (c < ne && v > edges[c])
            c++;
        while (c > 0 && !(v > edges[c - 1]))
            c--;
        out[i] = (uint8_t)c;
    }
}

/* Up to 16 edges: each value compared with every edge and the edges below it counted, as
 * numpy's compare per edge does (any order of edges; NaN above none). AVX-512 or AVX2:
 * sixteen or eight values against one edge per instruction, the counts in lanes. */
static void count_plain(const float *values, Py_ssize_t n, const float *edges, Py_ssize_t ne, uint8_t *out) {
    for (Py_ssize_t i = 0; i < n; i++) {
        int c = 0;
        for (Py_ssize_t e = 0; e < ne; e++)
            c += values[i] > edges[e];
        out[i] = (uint8_t)c;
    }
}

#ifdef HAVE_AVX2_PATH
__attribute__((target("avx2"))) static Py_ssize_t count_avx2(const float *values, Py_ssize_t n, const float *edges,
                                                            Py_ssize_t ne, uint8_t *out) {
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(values + i);
        __m256i c = _mm256_setzero_si256();
        for (Py_ssize_t e = 0; e < ne; e++) /* a true compare is all ones: -1 */
            c = _mm256_sub_epi32(c, _mm256_castps_si256(_mm256_cmp_ps(v, _mm256_set1_ps(edges[e]), _CMP_GT_OQ)));
        int32_t lanes[8];
        _mm256_storeu_si256((__m256i *)lanes, c);
        for (int l = 0; l < 8; l++)
            out[i + l] = (uint8_t)lanes[l];
    }
    return i;
}

__attribute__((target("avx512f"))) static Py_ssize_t count_avx512(const float *values, Py_ssize_t n,
                                                                 const float *edges, Py_ssize_t ne, uint8_t *out) {
    const __m512i one = _mm512_set1_epi32(1);
    Py_ssize_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_loadu_ps(values + i);
        __m512i c = _mm512_setzero_si512();
        for (Py_ssize_t e = 0; e < ne; e++)
            c = _mm512_mask_add_epi32(c, _mm512_cmp_ps_mask(v, _mm512_set1_ps(edges[e]), _CMP_GT_OQ), c, one);
        _mm_storeu_si128((__m128i *)(out + i), _mm512_cvtepi32_epi8(c));
    }
    return i;
}
#endif

static void count_small(const float *values, Py_ssize_t n, const float *edges, Py_ssize_t ne, uint8_t *out) {
    Py_ssize_t done = 0;
#ifdef HAVE_AVX2_PATH
    if (vectors >= 2)
        done = count_avx512(values, n, edges, ne, out);
    else if (vectors >= 1)
        done = count_avx2(values, n, edges, ne, out);
#endif
    count_plain(values + done, n - done, edges, ne, out + done);
}

/* count_codes(values, edges, out): kmeans_codes._count_below for float32 values: up to 16
 * edges by count_small (2.5 ms for a MiniLM-shaped word embedding's 477 groups of 15 edges
 * where numpy's compare per edge took 26 ms), 17-255 sorted ones by grid_codes (0.19 ms for
 * 65K values by 255 edges, numpy 1.25 ms). False (nothing written) for other edges. */
static PyObject *count_codes(PyObject *self, PyObject *args) {
    PyObject *result = NULL;
    PyObject *o[3];
    Buffer b[3] = {0};
    if (objects(args, o, 3, "count_codes") < 0)
        return NULL;
    Py_ssize_t n, ne;
    if (take(o[0], &b[0], 0, 0, 4, "values") < 0 || take(o[1], &b[1], 0, 0, 4, "edges") < 0)
        goto done;
    n = COUNT(b[0], float), ne = COUNT(b[1], float);
    if (take(o[2], &b[2], 1, n, 1, "out") < 0)
        goto done;
    {
        const float *values = (const float *)b[0].view.buf, *edges = (const float *)b[1].view.buf;
        uint8_t *out = (uint8_t *)b[2].view.buf;
        if (ne <= 16) {
            Py_BEGIN_ALLOW_THREADS
            count_small(values, n, edges, ne, out);
            Py_END_ALLOW_THREADS
            result = Py_NewRef(Py_True);
            goto done;
        }
        int sorted = ne <= 255 && edges[ne - 1] > edges[0]; /* (a range for the grid) */
        for (Py_ssize_t e = 1; e < ne && sorted; e++)
            sorted = edges[e - 1] <= edges[e];
        if (!sorted) {
            result = Py_NewRef(Py_False);
            goto done;
        }
        Py_ssize_t cells = 16 * ne;
        uint16_t *grid = PyMem_RawMalloc(cells * sizeof(uint16_t));
        if (!grid) {
            PyErr_NoMemory();
            goto done;
        }
        Py_BEGIN_ALLOW_THREADS
        grid_codes(values, n, edges, ne, out, grid, cells);
        Py_END_ALLOW_THREADS
        PyMem_RawFree(grid);
    }
    result = Py_NewRef(Py_True);
done:
    release(b, 3);
    return result;
}

/* y = W x for one input vector, W given by 4-bit codes packed two a byte (the earlier column
 * in the high nibble, each row starting on a byte) and a float32 codebook of 16 entries per
 * row group: no float32 copy of W is made, so the product reads half a byte a weight.
 * AVX2: eight codes looked up at once (two permutes of eight entries and a blend), multiplied
 * and added into eight running sums. The sums' order is not a matmul's: the same product to
 * float32 rounding, not to the bit. */
/* The 4-bit code of column c of a packed row (the earlier column in the high nibble). */
static inline int code4(const uint8_t *row, Py_ssize_t c) {
    uint8_t byte = row[c / 2];
    return (c % 2) ? (byte & 15) : (byte >> 4);
}

#ifdef HAVE_AVX2_PATH
/* The codebook entries of the eight 4-bit codes in four bytes: the codes' indices by shifts,
 * each looked up in the low and the high eight entries, the right one kept by its bit 3. */
__attribute__((target("avx2,fma"))) static inline __m256 entries8(const uint8_t *bytes, __m256 low, __m256 high) {
    const __m256i shifts = _mm256_setr_epi32(4, 0, 12, 8, 20, 16, 28, 24), nibble = _mm256_set1_epi32(15);
    uint32_t word;
    memcpy(&word, bytes, 4);
    __m256i index = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)word), shifts), nibble);
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(low, index), _mm256_permutevar8x32_ps(high, index),
                            _mm256_castsi256_ps(_mm256_slli_epi32(index, 28)));
}

__attribute__((target("avx2,fma"))) static void matvec4_rows(const uint8_t *packed, Py_ssize_t row_bytes,
                                                            Py_ssize_t cols, Py_ssize_t first, Py_ssize_t stop,
                                                            Py_ssize_t group_rows, const float *codebooks,
                                                            const float *x, float *y) {
    Py_ssize_t whole = cols / 8;
    for (Py_ssize_t r = first; r < stop; r++) {
        const float *cb = codebooks + 16 * (r / group_rows);
        __m256 low = _mm256_loadu_ps(cb), high = _mm256_loadu_ps(cb + 8);
        const uint8_t *row = packed + r * row_bytes;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        Py_ssize_t k = 0;
        for (; k + 1 < whole; k += 2) {
            a0 = _mm256_fmadd_ps(entries8(row + 4 * k, low, high), _mm256_loadu_ps(x + 8 * k), a0);
            a1 = _mm256_fmadd_ps(entries8(row + 4 * k + 4, low, high), _mm256_loadu_ps(x + 8 * k + 8), a1);
        }
        for (; k < whole; k++)
            a0 = _mm256_fmadd_ps(entries8(row + 4 * k, low, high), _mm256_loadu_ps(x + 8 * k), a0);
        __m256 sum = _mm256_add_ps(a0, a1);
        __m128 half = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
        half = _mm_add_ps(half, _mm_movehl_ps(half, half));
        half = _mm_add_ss(half, _mm_shuffle_ps(half, half, 1));
        float total = _mm_cvtss_f32(half);
        for (Py_ssize_t c = 8 * whole; c < cols; c++)
            total += cb[code4(row, c)] * x[c];
        y[r] = total;
    }
}

/* With AVX-512, sixteen 4-bit codes at a time: eight bytes split into their high and low
 * halves, interleaved in column order, widened to indices and looked up in the group's 16
 * entries by one permute. VGG16's fc1 on one thread: 8.4 ms with the AVX2 loop above. */
__attribute__((target("avx512f"))) static void matvec4_rows_512(const uint8_t *packed, Py_ssize_t row_bytes,
                                                               Py_ssize_t cols, Py_ssize_t first, Py_ssize_t stop,
                                                               Py_ssize_t group_rows, const float *codebooks,
                                                               const float *x, float *y) {
    const __m128i nibble = _mm_set1_epi8(15);
    Py_ssize_t whole = cols / 16;
    for (Py_ssize_t r = first; r < stop; r++) {
        const float *cb = codebooks + 16 * (r / group_rows);
        const __m512 table = _mm512_loadu_ps(cb);
        const uint8_t *row = packed + r * row_bytes;
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(); /* two sums: their adds overlap */
        for (Py_ssize_t k = 0; k < whole; k++) {
            __m128i bytes = _mm_loadl_epi64((const __m128i *)(row + 8 * k));
            __m128i high = _mm_and_si128(_mm_srli_epi16(bytes, 4), nibble), low = _mm_and_si128(bytes, nibble);
            __m512 w = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm_unpacklo_epi8(high, low)), table);
            __m512 sum = _mm512_fmadd_ps(w, _mm512_loadu_ps(x + 16 * k), a0);
            a0 = a1, a1 = sum;
        }
        float total = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
        for (Py_ssize_t c = 16 * whole; c < cols; c++)
            total += cb[code4(row, c)] * x[c];
        y[r] = total;
    }
}

/* The same for 8-bit codes, a byte each, and a 256-entry codebook per row group, with
 * AVX-512: sixteen codes at a time, the group's entries held in sixteen registers, each code
 * looked up in the eight tables of 32 entries it may fall in (two-register permutes by its
 * low five bits), then the one its top three bits name kept (blends by bits 5, 6 and 7).
 * With AVX2 only, 8-bit layers keep to the bands: gathers from the codebook (about a value
 * a cycle) took 6.2 ms for VGG16's fc2 on one thread, the bands 5.0 ms. */
__attribute__((target("avx512f"))) static void matvec8_rows_512(const uint8_t *codes, Py_ssize_t cols,
                                                               Py_ssize_t first, Py_ssize_t stop,
                                                               Py_ssize_t group_rows, const float *codebooks,
                                                               const float *x, float *y) {
    Py_ssize_t whole = cols / 16;
    const __m512i bit5 = _mm512_set1_epi32(32), bit6 = _mm512_set1_epi32(64), bit7 = _mm512_set1_epi32(128);
    for (Py_ssize_t r = first; r < stop; r++) {
        const float *cb = codebooks + 256 * (r / group_rows);
        __m512 t[16];
        for (int i = 0; i < 16; i++)
            t[i] = _mm512_loadu_ps(cb + 16 * i);
        const uint8_t *row = codes + r * cols;
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
        for (Py_ssize_t k = 0; k < whole; k++) {
            __m512i index = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(row + 16 * k)));
            __mmask16 m5 = _mm512_test_epi32_mask(index, bit5), m6 = _mm512_test_epi32_mask(index, bit6),
                      m7 = _mm512_test_epi32_mask(index, bit7);
            __m512 p0 = _mm512_permutex2var_ps(t[0], index, t[1]), p1 = _mm512_permutex2var_ps(t[2], index, t[3]);
            __m512 p2 = _mm512_permutex2var_ps(t[4], index, t[5]), p3 = _mm512_permutex2var_ps(t[6], index, t[7]);
            __m512 p4 = _mm512_permutex2var_ps(t[8], index, t[9]), p5 = _mm512_permutex2var_ps(t[10], index, t[11]);
            __m512 p6 = _mm512_permutex2var_ps(t[12], index, t[13]), p7 = _mm512_permutex2var_ps(t[14], index, t[15]);
            __m512 low = _mm512_mask_blend_ps(m6, _mm512_mask_blend_ps(m5, p0, p1), _mm512_mask_blend_ps(m5, p2, p3));
            __m512 high = _mm512_mask_blend_ps(m6, _mm512_mask_blend_ps(m5, p4, p5), _mm512_mask_blend_ps(m5, p6, p7));
            __m512 sum = _mm512_fmadd_ps(_mm512_mask_blend_ps(m7, low, high), _mm512_loadu_ps(x + 16 * k), a0);
            a0 = a1, a1 = sum;
        }
        float total = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
        for (Py_ssize_t c = 16 * whole; c < cols; c++)
            total += cb[row[c]] * x[c];
        y[r] = total;
    }
}
#endif

/* matvec(bits, codes, cols, group_rows, codebooks, x, y, first, stop): y[first:stop] of W x
 * for 4-bit codes packed two a byte (16 codebook entries a group) or 8-bit ones (256), see
 * above; False (nothing written) where this processor has no AVX2 and FMA, or for 8-bit
 * codes no AVX-512. */
static PyObject *matvec(PyObject *self, PyObject *args) {
    PyObject *result = NULL;
    PyObject *o[7];
    Py_ssize_t cols, group_rows, first, stop;
    int bits;
    Buffer b[7] = {0};
    if (!PyArg_ParseTuple(args, "iOnnOOOnn", &bits, &o[1], &cols, &group_rows, &o[4], &o[5], &o[6], &first, &stop))
        return NULL;
#ifdef HAVE_AVX2_PATH
    if (vectors < 1 || (bits == 8 && vectors < 2))
        return Py_NewRef(Py_False);
    if ((bits != 4 && bits != 8) || cols < 1 || group_rows < 1 || first < 0 || stop < first) {
        PyErr_SetString(PyExc_ValueError, "matvec: bad bits, shape or rows");
        return NULL;
    }
    Py_ssize_t row_bytes = bits == 4 ? (cols + 1) / 2 : cols, entries = (Py_ssize_t)1 << bits, rows, groups;
    if (take(o[1], &b[1], 0, row_bytes, 1, "codes") < 0)
        goto done;
    rows = b[1].view.len / row_bytes;
    groups = (rows + group_rows - 1) / group_rows;
    if (stop > rows || take(o[4], &b[4], 0, entries * groups, 4, "codebooks") < 0 ||
        take(o[5], &b[5], 0, cols, 4, "x") < 0 || take(o[6], &b[6], 1, rows, 4, "y") < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "matvec: rows past the codes");
        goto done;
    }
    {
        int wide = vectors >= 2;
        const uint8_t *codes = (const uint8_t *)b[1].view.buf;
        const float *books = (const float *)b[4].view.buf, *x = (const float *)b[5].view.buf;
        float *y = (float *)b[6].view.buf;
        Py_BEGIN_ALLOW_THREADS
        if (bits == 4 && wide)
            matvec4_rows_512(codes, row_bytes, cols, first, stop, group_rows, books, x, y);
        else if (bits == 4)
            matvec4_rows(codes, row_bytes, cols, first, stop, group_rows, books, x, y);
        else
            matvec8_rows_512(codes, cols, first, stop, group_rows, books, x, y);
        Py_END_ALLOW_THREADS
    }
    result = Py_NewRef(Py_True);
done:
    release(b, 7);
    return result;
#else
    (void)o, (void)b, (void)bits;
    return Py_NewRef(Py_False);
#endif
}

/* lookup(table, indices, out): out[i] = table[indices[i]] for byte indices into a table of
 * 256 entries of 4, 8, 16 or 32 bytes (a byte of codes' float32 values: 8-, 4-, 2- and 1-bit
 * codes), the loader's hot loop (Method.dequantize_packed). np.take first widens every byte
 * to an 8-byte index, then copies entry by entry. */
#define LOOKUP(type)                                                                                              \
    do {                                                                                                          \
        const type *t = (const type *)table;                                                                      \
        type *o = (type *)out;                                                                                    \
        for (Py_ssize_t i = 0; i < n; i++)                                                                        \
            o[i] = t[index[i]];                                                                                   \
    } while (0)

typedef struct {
    uint64_t part[2];
} Entry16;
typedef struct {
    uint64_t part[4];
} Entry32;

static PyObject *lookup(PyObject *self, PyObject *args) {
    PyObject *result = NULL;
    PyObject *o[3];
    Buffer b[3] = {0};
    if (objects(args, o, 3, "lookup") < 0)
        return NULL;
    if (take(o[0], &b[0], 0, 256, 1, "table") < 0 || take(o[1], &b[1], 0, 0, 1, "indices") < 0)
        goto done;
    Py_ssize_t entry = b[0].view.len / 256, n = b[1].view.len;
    if (b[0].view.len != 256 * entry || (entry != 4 && entry != 8 && entry != 16 && entry != 32)) {
        PyErr_Format(PyExc_ValueError, "lookup: table of %zd bytes, expected 256 entries of 4, 8, 16 or 32",
                     b[0].view.len);
        goto done;
    }
    if (take(o[2], &b[2], 1, n * entry, 1, "out") < 0)
        goto done;
    {
        const char *table = (const char *)b[0].view.buf;
        const uint8_t *index = (const uint8_t *)b[1].view.buf;
        char *out = (char *)b[2].view.buf;
        Py_BEGIN_ALLOW_THREADS
        if (entry == 4)
            LOOKUP(uint32_t);
        else if (entry == 8)
            LOOKUP(uint64_t);
        else if (entry == 16)
            LOOKUP(Entry16);
        else
            LOOKUP(Entry32);
        Py_END_ALLOW_THREADS
    }
    result = Py_NewRef(Py_None);
done:
    release(b, 3);
    return result;
}

/* A float32's bits as an unsigned key that sorts as the float does: negatives flipped whole,
 * positives with the sign bit set (-0.0 sorts just before +0.0), and back. */
static inline uint32_t float_key(uint32_t bits) { return bits ^ ((uint32_t)((int32_t)bits >> 31) | 0x80000000u); }
static inline uint32_t key_float(uint32_t key) { return key ^ (((key >> 31) - 1u) | 0x80000000u); }

#define RADIX_PASSES 3
static const int radix_shift[RADIX_PASSES] = {0, 11, 22};

/* unique_floats(values, points, counts): histogram._unique_counts of float32 values, sorted
 * by an LSD radix sort of their keys (three passes of 11, 11 and 10 bits, a pass skipped
 * where every key has the same digit) and split into runs: points (float64) the distinct
 * values ascending, counts (int64) how many of each; -0.0 and +0.0 one point, +0.0. Returns
 * the number of points, or -1 (nothing written) where a value is NaN: the caller sorts. */
static PyObject *unique_floats(PyObject *self, PyObject *args) {
    PyObject *result = NULL;
    PyObject *o[3];
    Buffer b[3] = {0};
    if (objects(args, o, 3, "unique_floats") < 0)
        return NULL;
    if (take(o[0], &b[0], 0, 0, 4, "values") < 0)
        goto done;
    Py_ssize_t n = COUNT(b[0], float);
    if (take(o[1], &b[1], 1, n, 8, "points") < 0 || take(o[2], &b[2], 1, n, 8, "counts") < 0)
        goto done;
    {
        const uint32_t *bits = (const uint32_t *)b[0].view.buf;
        double *points = DOUBLES(b[1]);
        int64_t *counts = INTS(b[2]);
        Py_ssize_t found = 0;
        int failed = 0, nan = 0;
        Py_BEGIN_ALLOW_THREADS
        uint32_t *keys = PyMem_RawMalloc((size_t)(n ? n : 1) * 2 * sizeof(uint32_t));
        Py_ssize_t *tally = PyMem_RawCalloc((size_t)RADIX_PASSES << 11, sizeof(Py_ssize_t));
        if (keys == NULL || tally == NULL) {
            failed = 1;
        } else {
            uint32_t *from = keys, *to = keys + n;
            for (Py_ssize_t i = 0; i < n; i++) {
                if ((bits[i] & 0x7fffffffu) > 0x7f800000u) {
                    nan = 1;
                    break;
                }
                uint32_t key = float_key(bits[i]);
                from[i] = key;
                for (int p = 0; p < RADIX_PASSES; p++)
                    tally[(p << 11) + ((key >> radix_shift[p]) & 0x7ffu)]++;
            }
            for (int p = 0; p < RADIX_PASSES && !nan && n > 0; p++) {
                Py_ssize_t *bucket = tally + (p << 11);
                if (bucket[(from[0] >> radix_shift[p]) & 0x7ffu] == n)
                    continue; /* one digit for all: the order stands */
                Py_ssize_t start = 0;
                for (int d = 0; d < 2048; d++) {
                    Py_ssize_t size = bucket[d];
                    bucket[d] = start;
                    start += size;
                }
                for (Py_ssize_t i = 0; i < n; i++)
                    to[bucket[(from[i] >> radix_shift[p]) & 0x7ffu]++] = from[i];
                uint32_t *swap = from;
                from = to;
                to = swap;
            }
            for (Py_ssize_t i = 0; i < n && !nan; i++) {
                uint32_t raw = key_float(from[i]);
                float value;
                memcpy(&value, &raw, sizeof value);
                if (i > 0 && from[i] == from[i - 1]) {
                    counts[found - 1]++;
                } else if (i > 0 && (double)value == points[found - 1]) { /* +0.0 after -0.0 */
                    counts[found - 1]++;
                    points[found - 1] = value;
                } else {
                    points[found] = value;
                    counts[found++] = 1;
                }
            }
        }
        PyMem_RawFree(keys);
        PyMem_RawFree(tally);
        Py_END_ALLOW_THREADS
        if (failed)
            PyErr_NoMemory();
        else
            result = PyLong_FromSsize_t(nan ? -1 : found);
    }
done:
    release(b, 3);
    return result;
}

/* half_values(values, half, error): float32 values rounded to float16 as numpy rounds them
 * (to nearest, ties to even; past 65504 to infinity; subnormals kept), eight at a time by
 * F16C: their bits into `half` (uint16) unless it is None, and value - its float16's value
 * (float32, exact) into `error` unless None. False where the processor lacks F16C (or
 * set_vectors lowered the level to none) or a value is NaN (F16C quiets a NaN that numpy
 * keeps): then nothing is promised of the outputs, and the caller converts with numpy. */
#ifdef HAVE_AVX2_PATH
static int processor_f16c = 0;

/* Eight values; 0 (nothing written) where one is NaN. */
__attribute__((target("avx2,f16c"))) static int half_block(const float *x, uint16_t *half, float *error) {
    __m256 v = _mm256_loadu_ps(x);
    if (_mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)))
        return 0;
    __m128i h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT);
    if (half != NULL)
        _mm_storeu_si128((__m128i *)half, h);
    if (error != NULL)
        _mm256_storeu_ps(error, _mm256_sub_ps(v, _mm256_cvtph_ps(h)));
    return 1;
}

__attribute__((target("avx2,f16c"))) static int half_pass(const float *x, Py_ssize_t n, uint16_t *half,
                                                           float *error) {
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8)
        if (!half_block(x + i, half == NULL ? NULL : half + i, error == NULL ? NULL : error + i))
            return 0;
    if (i < n) { /* the tail through a block of eight, zero-padded */
        float in[8] = {0}, err[8];
        uint16_t bits[8];
        memcpy(in, x + i, (size_t)(n - i) * sizeof(float));
        if (!half_block(in, bits, err))
            return 0;
        if (half != NULL)
            memcpy(half + i, bits, (size_t)(n - i) * sizeof(uint16_t));
        if (error != NULL)
            memcpy(error + i, err, (size_t)(n - i) * sizeof(float));
    }
    return 1;
}
#endif

static PyObject *half_values(PyObject *self, PyObject *args) {
    PyObject *result = NULL;
    PyObject *o[3];
    Buffer b[3] = {0};
    if (objects(args, o, 3, "half_values") < 0)
        return NULL;
    if (take(o[0], &b[0], 0, 0, 4, "values") < 0)
        goto done;
    Py_ssize_t n = COUNT(b[0], float);
    if ((o[1] != Py_None && take(o[1], &b[1], 1, n, 2, "half") < 0) ||
        (o[2] != Py_None && take(o[2], &b[2], 1, n, 4, "error") < 0))
        goto done;
    {
        int ok = 0;
#ifdef HAVE_AVX2_PATH
        if (vectors >= 1 && processor_f16c) {
            const float *x = (const float *)b[0].view.buf;
            uint16_t *half = b[1].held ? (uint16_t *)b[1].view.buf : NULL;
            float *error = b[2].held ? (float *)b[2].view.buf : NULL;
            Py_BEGIN_ALLOW_THREADS
            ok = half_pass(x, n, half, error);
            Py_END_ALLOW_THREADS
        }
#endif
        result = PyBool_FromLong(ok);
    }
done:
    release(b, 3);
    return result;
}

/* widen_half(half, out): float16 bits (uint16) widened to float32, numpy's bits for every
 * pattern: F16C eight at a time, and a NaN (which F16C quiets, numpy keeps as it is) by
 * numpy's rule, sign | all-ones exponent | the payload moved up 13 bits. False (nothing
 * written) without F16C or vectors. */
#ifdef HAVE_AVX2_PATH
static inline uint32_t nan_bits(uint16_t h) { return ((uint32_t)(h & 0x8000u) << 16) | 0x7f800000u | ((uint32_t)(h & 0x3ffu) << 13); }

/* Eight values. */
__attribute__((target("avx2,f16c"))) static void widen_block(const uint16_t *half, float *out) {
    const __m128i magnitude = _mm_set1_epi16(0x7fff), infinity = _mm_set1_epi16(0x7c00);
    __m128i h = _mm_loadu_si128((const __m128i *)half);
    _mm256_storeu_ps(out, _mm256_cvtph_ps(h));
    /* NaN: magnitude above infinity's (signed compare: magnitudes are below 0x8000) */
    if (_mm_movemask_epi8(_mm_cmpgt_epi16(_mm_and_si128(h, magnitude), infinity)))
        for (int j = 0; j < 8; j++)
            if ((half[j] & 0x7fffu) > 0x7c00u) {
                uint32_t bits = nan_bits(half[j]);
                memcpy(out + j, &bits, sizeof bits);
            }
}

__attribute__((target("avx2,f16c"))) static void widen_pass(const uint16_t *half, Py_ssize_t n, float *out) {
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8)
        widen_block(half + i, out + i);
    if (i < n) { /* the tail through a block of eight, zero-padded */
        uint16_t block[8] = {0};
        float wide[8];
        memcpy(block, half + i, (size_t)(n - i) * sizeof(uint16_t));
        widen_block(block, wide);
        memcpy(out + i, wide, (size_t)(n - i) * sizeof(float));
    }
}
#endif

static PyObject *widen_half(PyObject *self, PyObject *args) {
    PyObject *result = NULL;
    PyObject *o[2];
    Buffer b[2] = {0};
    if (objects(args, o, 2, "widen_half") < 0)
        return NULL;
    if (take(o[0], &b[0], 0, 0, 2, "half") < 0)
        goto done;
    Py_ssize_t n = COUNT(b[0], uint16_t);
    if (take(o[1], &b[1], 1, n, 4, "out") < 0)
        goto done;
    {
        int ok = 0;
#ifdef HAVE_AVX2_PATH
        if (vectors >= 1 && processor_f16c) {
            const uint16_t *half = (const uint16_t *)b[0].view.buf;
            float *out = (float *)b[1].view.buf;
            Py_BEGIN_ALLOW_THREADS
            widen_pass(half, n, out);
            Py_END_ALLOW_THREADS
            ok = 1;
        }
#endif
        result = PyBool_FromLong(ok);
    }
done:
    release(b, 2);
    return result;
}

/* set_vectors(level): the widest vectors the loops may use from now on (0 none, 1 AVX2, 2
 * AVX-512), at most the processor's; returns the level in force. The results are the same
 * at every level, to the bit (the DP) or to float32 rounding (matvec); tests compare them. */
static PyObject *set_vectors(PyObject *self, PyObject *args) {
    int level;
    if (!PyArg_ParseTuple(args, "i", &level))
        return NULL;
    vectors = level < 0 ? 0 : level > processor_vectors ? processor_vectors : level;
    return PyLong_FromLong(vectors);
}

static PyMethodDef methods[] = {
    {"set_vectors", set_vectors, METH_VARARGS, "the widest vectors the loops may use"},
    {"bin_floats", bin_floats, METH_VARARGS, "histogram bins of float32 values, counted in one pass"},
    {"linear_rows", linear_rows, METH_VARARGS, "linear codes, dequantized values and counts of rows"},
    {"lookup", lookup, METH_VARARGS, "out[i] = table[indices[i]], byte indices, 256 entries"},
    {"matvec", matvec, METH_VARARGS, "W x for 4- or 8-bit codes and per-group codebooks"},
    {"top_codes", top_codes, METH_VARARGS, "kmeans_codes' top-half lookup, into a given output"},
    {"count_codes", count_codes, METH_VARARGS, "kmeans_codes._count_below, into a given output"},
    {"dp_extend", dp_extend, METH_VARARGS, "kernels_numba.dp_extend, into given outputs"},
    {"dp_dense", dp_dense, METH_VARARGS, "kernels_numba.dp_dense, into given outputs"},
    {"lloyd", lloyd, METH_VARARGS, "fit_loops.lloyd_iterations, into a given output"},
    {"ec", ec, METH_VARARGS, "fit_loops.ec_iterations, into given outputs"},
    {"bins", bins, METH_VARARGS, "kernels_numba.count_bins / sum_bins, into a given output"},
    {"prefix_sums", prefix_sums, METH_VARARGS, "kernels_numba.prefix_sums"},
    {"unique_floats", unique_floats, METH_VARARGS, "sorted distinct float32 values and their counts"},
    {"half_values", half_values, METH_VARARGS, "float32 values rounded to float16, and the rounding error"},
    {"widen_half", widen_half, METH_VARARGS, "float16 bits widened to float32, numpy's bits"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels", "kformat's fit loops in C", -1, methods};

PyMODINIT_FUNC PyInit__kernels(void) {
#ifdef HAVE_AVX2_PATH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        processor_vectors = __builtin_cpu_supports("avx512f") ? 2 : 1;
    processor_f16c = processor_vectors >= 1 && __builtin_cpu_supports("f16c");
#endif
    vectors = processor_vectors;
    return PyModule_Create(&module);
}
