/* The loops of rl_lightning.replay._SumTree, compiled: batched descent, batched update and rebuild.
 *
 * A plain CPython extension (no torch or numpy headers): the functions take the raw data pointers of the
 * tree's contiguous torch tensors (``tensor.data_ptr()``) and their sizes, and release the GIL around the
 * loops. The arithmetic mirrors the torch implementation operation for operation (float64 running sums
 * accumulated left to right, the same comparisons), so both give the same tree and the same leaves.
 *
 * Layout (see _SumTree): ``depth`` levels, level 0 the parents of the leaves. Level h holds ``rows[h]`` rows
 * of ``k`` children's values (float32 at level 0, float64 above) and minima (float32); row r of level h
 * sums into entry r of level h + 1 (flattened), and the rows of the last level into ``top`` (the root's
 * children, float64, with their minima). ``root`` (``top_len + 1`` float64) is the running sum of ``top``
 * starting at 0.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>

#define MAX_DEPTH 64

typedef struct {
    int depth;
    Py_ssize_t k;
    Py_ssize_t rows[MAX_DEPTH];
    void *values[MAX_DEPTH]; /* float (level 0) or double (above), [rows[h], k] */
    float *minima[MAX_DEPTH];
    double *top_values;
    float *top_minima;
    double *root;
    Py_ssize_t top_len;
} Tree;

static void *as_pointer(PyObject *item) {
    unsigned long long address = PyLong_AsUnsignedLongLong(item);
    if (address == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    if (address == 0) {
        PyErr_SetString(PyExc_ValueError, "_sumtree: a data pointer is 0 (expected tensor.data_ptr() of a tensor)");
        return NULL;
    }
    return (void *)(uintptr_t)address;
}

/* Fills `tree` from (k, top_len, rows, values, minima, top_values, top_minima, root): rows, values and minima
 * are tuples of one int per level. Returns 0, or -1 with an exception set. */
static int parse_tree(PyObject *spec, Tree *tree) {
    PyObject *rows, *values, *minima;
    unsigned long long top_values, top_minima, root;
    if (!PyArg_ParseTuple(spec, "nnO!O!O!KKK", &tree->k, &tree->top_len, &PyTuple_Type, &rows, &PyTuple_Type,
                          &values, &PyTuple_Type, &minima, &top_values, &top_minima, &root))
        return -1;
    Py_ssize_t depth = PyTuple_GET_SIZE(rows);
    if (depth < 1 || depth > MAX_DEPTH || PyTuple_GET_SIZE(values) != depth || PyTuple_GET_SIZE(minima) != depth ||
        tree->k < 1 || tree->top_len < 1 || !top_values || !top_minima || !root) {
        PyErr_SetString(PyExc_ValueError, "_sumtree: inconsistent tree layout");
        return -1;
    }
    tree->depth = (int)depth;
    for (Py_ssize_t h = 0; h < depth; h++) {
        tree->rows[h] = PyLong_AsSsize_t(PyTuple_GET_ITEM(rows, h));
        if (tree->rows[h] < 0) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "_sumtree: negative row count");
            return -1;
        }
        if (!(tree->values[h] = as_pointer(PyTuple_GET_ITEM(values, h)))) return -1;
        if (!(tree->minima[h] = as_pointer(PyTuple_GET_ITEM(minima, h)))) return -1;
    }
    tree->top_values = (double *)(uintptr_t)top_values;
    tree->top_minima = (float *)(uintptr_t)top_minima;
    tree->root = (double *)(uintptr_t)root;
    return 0;
}

/* torch.searchsorted(..., right=True) on `length` non-decreasing doubles: the first position whose value is > x. */
static Py_ssize_t upper_bound(const double *sorted, Py_ssize_t length, double x) {
    Py_ssize_t start = 0, end = length;
    while (start < end) {
        Py_ssize_t mid = start + ((end - start) >> 1);
        if (!(sorted[mid] > x))
            start = mid + 1;
        else
            end = mid;
    }
    return start;
}

/* upper_bound on non-decreasing `sorted`, searched outwards from `hint` (the previous query's answer: with
 * sorted queries, as stratified sampling makes them, the next answer is a few entries on). Same result. */
static Py_ssize_t upper_bound_from(const double *sorted, Py_ssize_t length, double x, Py_ssize_t hint) {
    Py_ssize_t lo, hi, step = 1;
    if (hint < 0) hint = 0;
    if (hint > length) hint = length;
    if (hint < length && !(sorted[hint] > x)) { /* the answer is after hint */
        lo = hint + 1;
        for (;;) {
            Py_ssize_t probe = hint + step;
            if (probe >= length) {
                hi = length;
                break;
            }
            if (sorted[probe] > x) {
                hi = probe;
                break;
            }
            lo = probe + 1;
            step *= 2;
        }
    } else { /* the answer is hint or before it */
        hi = hint;
        for (;;) {
            Py_ssize_t probe = hint - step;
            if (probe < 0) {
                lo = 0;
                break;
            }
            if (!(sorted[probe] > x)) {
                lo = probe + 1;
                break;
            }
            hi = probe;
            step *= 2;
        }
    }
    return lo + upper_bound(sorted + lo, hi - lo, x);
}

/* The sum (left to right, in float64) and minimum of one row of k children. */
static inline void row_stats(const Tree *tree, int h, Py_ssize_t row, double *sum, float *minimum) {
    Py_ssize_t k = tree->k;
    const float *mins = tree->minima[h] + row * k;
    double total = 0.0;
    float low = mins[0];
    if (h == 0) {
        const float *vals = (const float *)tree->values[0] + row * k;
        for (Py_ssize_t j = 0; j < k; j++) total += (double)vals[j];
    } else {
        const double *vals = (const double *)tree->values[h] + row * k;
        for (Py_ssize_t j = 0; j < k; j++) total += vals[j];
    }
    for (Py_ssize_t j = 1; j < k; j++)
        if (mins[j] < low) low = mins[j];
    *sum = total;
    *minimum = low;
}

/* Writes a row's sum and minimum into its parent entry (level h + 1, or the top). */
static inline void store_parent(const Tree *tree, int h, Py_ssize_t row, double sum, float minimum) {
    if (h + 1 < tree->depth) {
        ((double *)tree->values[h + 1])[row] = sum;
        tree->minima[h + 1][row] = minimum;
    } else {
        tree->top_values[row] = sum;
        tree->top_minima[row] = minimum;
    }
}

/* root[i + 1] = root[i] + top[i] for i >= from (root[0] stays 0), as torch.cumsum computes it. */
static void running_sum(const Tree *tree, Py_ssize_t from) {
    double running = from > 0 ? tree->root[from] : 0.0;
    if (from <= 0) {
        from = 0;
        tree->root[0] = 0.0;
    }
    for (Py_ssize_t i = from; i < tree->top_len; i++) {
        running += tree->top_values[i];
        tree->root[i + 1] = running;
    }
}

/* How many queries ahead the loops prefetch the row they will read: the rows are random lines of arrays of
 * megabytes, so the loops go level by level over all queries and keep several memory loads in flight. */
#ifndef AHEAD
#define AHEAD 8
#endif

#if defined(__GNUC__) || defined(__clang__)
#define PREFETCH(address, write) __builtin_prefetch((address), (write), 3)
#else
#define PREFETCH(address, write) ((void)(address))
#endif

/* Prefetches row `row` of level h: its values (one or two cache lines for k = 16) and, for updates, minima. */
static inline void prefetch_row(const Tree *tree, int h, Py_ssize_t row, int with_minima) {
    size_t width = h == 0 ? sizeof(float) : sizeof(double);
    const char *values = (const char *)tree->values[h] + (size_t)row * (size_t)tree->k * width;
    PREFETCH(values, 0);
    if (tree->k * (Py_ssize_t)width > 64) PREFETCH(values + 64, 0);
    if (with_minima) PREFETCH(tree->minima[h] + row * tree->k, 0);
}

/* Queries (and rows) handled side by side: their float64 running sums are chains of dependent additions, and
 * interleaving independent chains keeps the adder busy. Each query's own additions keep their order. */
#define GROUP 4

/* One descent step for n queries (n a constant after inlining): each query's node at level h becomes its child
 * whose interval of the node's running sum holds the residual, and the residual becomes relative to the child. */
static inline void descend(const Tree *tree, int h, int64_t *node, double *residual, double *exclusive, const int n) {
    const Py_ssize_t k = tree->k;
    double running[GROUP] = {0.0};
    /* Exclusive running sums as torch computes them: cumsum(row) - row, in float64. */
    if (h == 0) {
        const float *row[GROUP];
        for (int g = 0; g < n; g++) row[g] = (const float *)tree->values[0] + node[g] * k;
        for (Py_ssize_t j = 0; j < k; j++)
            for (int g = 0; g < n; g++) {
                running[g] += (double)row[g][j];
                exclusive[g * k + j] = running[g] - (double)row[g][j];
            }
    } else {
        const double *row[GROUP];
        for (int g = 0; g < n; g++) row[g] = (const double *)tree->values[h] + node[g] * k;
        for (Py_ssize_t j = 0; j < k; j++)
            for (int g = 0; g < n; g++) {
                running[g] += row[g][j];
                exclusive[g * k + j] = running[g] - row[g][j];
            }
    }
    for (int g = 0; g < n; g++) {
        /* The child: the last whose exclusive sum is <= the residual (zero-width children are passed over),
         * counted without branches: (exclusive <= residual).sum() - 1, as the torch loop computes it. */
        const double *ex = exclusive + g * k;
        Py_ssize_t child = -1;
        for (Py_ssize_t j = 0; j < k; j++) child += ex[j] <= residual[g];
        if (child < 0) child = 0; /* only for a mass < 0 or NaN: stay in bounds */
        if (h) residual[g] -= ex[child];
        node[g] = node[g] * k + child;
    }
}

/* The smallest of `length` floats (no NaN among them), with independent minima that vectorize. */
static float smallest_of(const float *values, Py_ssize_t length) {
    float lanes[8] = {INFINITY, INFINITY, INFINITY, INFINITY, INFINITY, INFINITY, INFINITY, INFINITY};
    Py_ssize_t i = 0;
    for (; i + 8 <= length; i += 8)
        for (int l = 0; l < 8; l++) lanes[l] = values[i + l] < lanes[l] ? values[i + l] : lanes[l];
    for (; i < length; i++) lanes[0] = values[i] < lanes[0] ? values[i] : lanes[0];
    float smallest = lanes[0];
    for (int l = 1; l < 8; l++) smallest = lanes[l] < smallest ? lanes[l] : smallest;
    return smallest;
}

PyDoc_STRVAR(find_doc,
             "find(tree, mass_ptr, count, limit, index_ptr, value_ptr, stratified)\n\n"
             "For each of `count` float64 masses, the leaf whose interval of the running sum over all leaves holds "
             "it, clamped to `limit - 1`; writes the leaves (int64) and their values (float32). With `stratified` "
             "true, `mass_ptr` holds uniform draws u_i in [0, 1), the masses are (u_i + i) * (total / count), and "
             "the values written are divided by the smallest leaf (float32).");

static PyObject *find(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *spec;
    unsigned long long mass_address, index_address, value_address;
    Py_ssize_t count, limit;
    int stratified;
    Tree tree;
    if (!PyArg_ParseTuple(args, "O!KnnKKp", &PyTuple_Type, &spec, &mass_address, &count, &limit, &index_address,
                          &value_address, &stratified))
        return NULL;
    if (parse_tree(spec, &tree) < 0) return NULL;
    if (count < 0 || limit < 1 || (count && (!mass_address || !index_address || !value_address))) {
        PyErr_SetString(PyExc_ValueError, "_sumtree.find: bad count, limit or pointers");
        return NULL;
    }
    if (count == 0) Py_RETURN_NONE;
    const double *mass = (const double *)(uintptr_t)mass_address;
    int64_t *node = (int64_t *)(uintptr_t)index_address; /* the node of each query, level by level */
    float *value = (float *)(uintptr_t)value_address;
    /* Per query its residual mass, then GROUP rows of exclusive running sums (no variable-length arrays). */
    double *residual = (double *)PyMem_RawMalloc((size_t)(count + GROUP * tree.k) * sizeof(double));
    if (!residual) return PyErr_NoMemory();
    double *exclusive = residual + count;

    Py_BEGIN_ALLOW_THREADS
    Py_ssize_t hint = 0;
    const double segment = tree.root[tree.top_len] / (double)count; /* as Python computes total / count */
    for (Py_ssize_t i = 0; i < count; i++) {
        const double x = stratified ? (mass[i] + (double)i) * segment : mass[i];
        Py_ssize_t top = (hint = upper_bound_from(tree.root, tree.top_len + 1, x, hint)) - 1;
        if (top < 0) top = 0;
        if (top > tree.top_len - 1) top = tree.top_len - 1;
        node[i] = top;
        residual[i] = x - tree.root[top];
    }
    for (int h = tree.depth - 1; h >= 0; h--) {
        for (Py_ssize_t i = 0; i < count && i < AHEAD; i++) prefetch_row(&tree, h, node[i], 0);
        Py_ssize_t i = 0;
        for (; i + GROUP <= count; i += GROUP) {
            for (Py_ssize_t g = AHEAD; g < AHEAD + GROUP && i + g < count; g++) prefetch_row(&tree, h, node[i + g], 0);
            descend(&tree, h, node + i, residual + i, exclusive, GROUP);
        }
        for (; i < count; i++) descend(&tree, h, node + i, residual + i, exclusive, 1);
    }
    const float *leaves = (const float *)tree.values[0];
    const float smallest = stratified ? smallest_of(tree.top_minima, tree.top_len) : 1.0f;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (node[i] > limit - 1) node[i] = limit - 1;
        value[i] = stratified ? leaves[node[i]] / smallest : leaves[node[i]];
    }
    Py_END_ALLOW_THREADS
    PyMem_RawFree(residual);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(update_doc,
             "update(tree, leaf_ptr, value_ptr, count, limit, require_increasing) -> (updated, increasing, low, high, "
             "largest)\n\n"
             "Checks `count` (>= 1) int64 leaves and their float32 values in one pass, then, if every leaf is in "
             "[0, limit), every value is finite and (when `require_increasing`) the leaves strictly increase, sets "
             "the leaves and recomputes their ancestors' sums and minima from their children, and the root's "
             "running sum. Returns whether it did, whether the leaves strictly increase, the smallest and largest "
             "leaf, and the largest value (NaN when a value is NaN or infinite). Refused batches change nothing.");

static PyObject *update(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *spec;
    unsigned long long leaf_address, value_address;
    Py_ssize_t count, limit;
    int require_increasing;
    Tree tree;
    if (!PyArg_ParseTuple(args, "O!KKnnp", &PyTuple_Type, &spec, &leaf_address, &value_address, &count, &limit,
                          &require_increasing))
        return NULL;
    if (parse_tree(spec, &tree) < 0) return NULL;
    if (count < 1 || !leaf_address || !value_address) {
        PyErr_SetString(PyExc_ValueError, "_sumtree.update: bad count or pointers");
        return NULL;
    }
    const int64_t *leaf = (const int64_t *)(uintptr_t)leaf_address;
    const float *value = (const float *)(uintptr_t)value_address;
    const Py_ssize_t k = tree.k, leaves = tree.rows[0] * tree.k;
    int increasing = 1, finite = 1;
    int64_t low = leaf[0], high = leaf[0];
    float largest = value[0];
    for (Py_ssize_t i = 0; i < count; i++) {
        if (i && leaf[i] <= leaf[i - 1]) increasing = 0;
        if (leaf[i] < low) low = leaf[i];
        if (leaf[i] > high) high = leaf[i];
        if (!isfinite(value[i])) finite = 0;
        if (value[i] > largest) largest = value[i];
    }
    const int accept = finite && low >= 0 && high < limit && high < leaves && (increasing || !require_increasing);
    PyObject *report = Py_BuildValue("(OOLLd)", accept ? Py_True : Py_False, increasing ? Py_True : Py_False,
                                     (long long)low, (long long)high, finite ? (double)largest : (double)NAN);
    if (!report || !accept) return report;
    /* The changed nodes of the current level; each level's are written over the previous level's. */
    Py_ssize_t *nodes = (Py_ssize_t *)PyMem_RawMalloc((size_t)count * sizeof(Py_ssize_t));
    if (!nodes) {
        Py_DECREF(report);
        return PyErr_NoMemory();
    }

    Py_BEGIN_ALLOW_THREADS
    float *leaf_values = (float *)tree.values[0];
    for (Py_ssize_t i = 0; i < count; i++) {
        if (i + AHEAD < count) {
            PREFETCH(leaf_values + leaf[i + AHEAD], 1);
            PREFETCH(tree.minima[0] + leaf[i + AHEAD], 1);
        }
        leaf_values[leaf[i]] = value[i];
        tree.minima[0][leaf[i]] = value[i];
        nodes[i] = (Py_ssize_t)leaf[i];
    }
    /* Level by level, all leaves written before any sum is taken; a row shared by consecutive changed nodes
     * (a sample's leaves come sorted) is recomputed once. */
    Py_ssize_t n = count;
    for (int h = 0; h < tree.depth; h++) {
        Py_ssize_t m = 0, previous = -1;
        for (Py_ssize_t i = 0; i < n; i++) {
            if (i + AHEAD < n) {
                Py_ssize_t ahead = nodes[i + AHEAD] / k;
                if (h + 1 < tree.depth) PREFETCH((double *)tree.values[h + 1] + ahead, 1);
                prefetch_row(&tree, h, ahead, 1);
            }
            Py_ssize_t row = nodes[i] / k;
            if (row == previous) continue;
            double sum;
            float minimum;
            row_stats(&tree, h, row, &sum, &minimum);
            store_parent(&tree, h, row, sum, minimum);
            nodes[m++] = previous = row;
        }
        n = m;
    }
    Py_ssize_t lowest_top = tree.top_len;
    for (Py_ssize_t i = 0; i < n; i++)
        if (nodes[i] < lowest_top) lowest_top = nodes[i];
    running_sum(&tree, lowest_top);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(nodes);
    return report;
}

PyDoc_STRVAR(rebuild_doc,
             "rebuild(tree)\n\n"
             "Recomputes every level above the leaves (sums and minima of every row), the root's children and the "
             "root's running sum from the leaves and their minima. The entries of a level past the rows below it "
             "must already be empty (0, +inf).");

static PyObject *rebuild(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *spec;
    Tree tree;
    if (!PyArg_ParseTuple(args, "O!", &PyTuple_Type, &spec)) return NULL;
    if (parse_tree(spec, &tree) < 0) return NULL;
    Py_BEGIN_ALLOW_THREADS
    for (int h = 0; h < tree.depth; h++) {
        for (Py_ssize_t row = 0; row < tree.rows[h]; row++) {
            double sum;
            float minimum;
            row_stats(&tree, h, row, &sum, &minimum);
            store_parent(&tree, h, row, sum, minimum);
        }
    }
    running_sum(&tree, 0);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"find", find, METH_VARARGS, find_doc},
    {"update", update, METH_VARARGS, update_doc},
    {"rebuild", rebuild, METH_VARARGS, rebuild_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_sumtree", "The compiled loops of rl_lightning.replay._SumTree.", -1, methods, NULL, NULL,
    NULL, NULL,
};

PyMODINIT_FUNC PyInit__sumtree(void) { return PyModule_Create(&module); }
