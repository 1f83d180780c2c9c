/* shmserve._native._client: the calling side's publish of one call, in one C call.
 *
 * `publish(buf, arena, pos, head_word, head, base, tensors, offsets, meta, meta_off,
 *          seq, code, block_len, t0, t1, tag)` does what `Ring.copy_in` followed by
 * `Ring.publish` (shmserve/shm/channel.py, wire.pack_desc) do for a request:
 *
 *   1. each tensor's bytes into the request arena at base + offset, and the
 *      metadata there too when it does not fit the descriptor inline;
 *   2. the descriptor at byte `pos` of `buf`: inline metadata, the fixed part
 *      (packed whole: t2..t4, batch_size, reserved and cancel zero, the tag NUL
 *      padded), one tensor header per tensor;
 *   3. the ring's head word = head + 1, stored with release ordering, so a
 *      consumer that reads the head with acquire (or after the semaphore post,
 *      a full barrier) sees everything of steps 1 and 2.
 *
 * It returns False, having written nothing, when a tensor is not a plain
 * memcpy (not C-contiguous, or not in little-endian byte order): the caller
 * then runs the Python twin, whose np.copyto handles both.
 *
 * No position is written here: `configure(fields)` is called once at import by
 * shmserve/link.py with the offsets of shmserve/shm/wire.py (the one
 * declaration of the layout), and publish refuses to run before it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_TENSORS_C 8
#define MAX_NDIM_C 8

static int configured = 0;
/* descriptor: fixed part */
static Py_ssize_t D_SEQ, D_CODE, D_FLAGS, D_BLOCK_OFF, D_BLOCK_LEN, D_META_LEN, D_NTENSORS, D_META_OFF,
    D_T0, D_T1, D_TAG, D_FIXED_SIZE, D_TAG_MAX, D_META_INLINE_OFF, D_META_INLINE_MAX, D_TENSORS_OFF,
    D_TENSOR_SLOT, D_SIZE, D_MAX_TENSORS, D_FLAG_META_IN_ARENA;
/* tensor header */
static Py_ssize_t T_OFFSET, T_NBYTES, T_DTYPE, T_DTYPE_MAX, T_NDIM, T_KIND, T_SHAPE, T_MAX_NDIM;

static int get_field(PyObject *fields, const char *name, Py_ssize_t *out) {
    PyObject *v = PyDict_GetItemString(fields, name); /* borrowed */
    if (v == NULL) {
        PyErr_Format(PyExc_KeyError, "configure: missing field %s", name);
        return -1;
    }
    Py_ssize_t n = PyLong_AsSsize_t(v);
    if (n == -1 && PyErr_Occurred())
        return -1;
    *out = n;
    return 0;
}

static PyObject *configure(PyObject *self, PyObject *fields) {
    (void)self;
    if (!PyDict_Check(fields)) {
        PyErr_SetString(PyExc_TypeError, "configure(fields): a dict of name -> offset");
        return NULL;
    }
    struct { const char *name; Py_ssize_t *dst; } table[] = {
        {"seq", &D_SEQ}, {"code", &D_CODE}, {"flags", &D_FLAGS}, {"block_off", &D_BLOCK_OFF},
        {"block_len", &D_BLOCK_LEN}, {"meta_len", &D_META_LEN}, {"ntensors", &D_NTENSORS},
        {"meta_off", &D_META_OFF}, {"t0", &D_T0}, {"t1", &D_T1}, {"request_tag", &D_TAG},
        {"fixed_size", &D_FIXED_SIZE}, {"tag_max", &D_TAG_MAX}, {"meta_inline_off", &D_META_INLINE_OFF},
        {"meta_inline_max", &D_META_INLINE_MAX}, {"tensors_off", &D_TENSORS_OFF},
        {"tensor_slot", &D_TENSOR_SLOT}, {"desc_size", &D_SIZE}, {"max_tensors", &D_MAX_TENSORS},
        {"flag_meta_in_arena", &D_FLAG_META_IN_ARENA},
        {"t_offset", &T_OFFSET}, {"t_nbytes", &T_NBYTES}, {"t_dtype", &T_DTYPE}, {"t_dtype_max", &T_DTYPE_MAX},
        {"t_ndim", &T_NDIM}, {"t_kind", &T_KIND}, {"t_shape", &T_SHAPE}, {"t_max_ndim", &T_MAX_NDIM},
    };
    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++)
        if (get_field(fields, table[i].name, table[i].dst) < 0)
            return NULL;
    if (D_MAX_TENSORS > MAX_TENSORS_C || T_MAX_NDIM > MAX_NDIM_C || D_TENSORS_OFF + D_MAX_TENSORS * D_TENSOR_SLOT > D_SIZE) {
        PyErr_SetString(PyExc_ValueError, "configure: layout outside what this module was built for");
        return NULL;
    }
    configured = 1;
    Py_RETURN_NONE;
}

/* Little-endian stores at any alignment (the host's own order is checked below). */
static inline void put_u64(char *p, uint64_t v) { memcpy(p, &v, 8); }
static inline void put_u32(char *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void put_i64(char *p, int64_t v) { memcpy(p, &v, 8); }
static inline void put_f64(char *p, double v) { memcpy(p, &v, 8); }

/* A buffer's bytes are the wire's (little endian) when its format names no other byte order. */
static int little_endian_format(const char *fmt) {
    if (fmt == NULL)
        return 1; /* unsigned bytes */
    return fmt[0] != '>' && fmt[0] != '!';
}

static PyObject *publish(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 16) {
        PyErr_SetString(PyExc_TypeError, "publish takes 16 arguments");
        return NULL;
    }
    if (!configured) {
        PyErr_SetString(PyExc_RuntimeError, "shmserve._native._client: configure() was not called");
        return NULL;
    }
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
    Py_RETURN_FALSE; /* the Python twin packs little endian on any host */
#else
    PyObject *tensors = args[6], *offsets = args[7], *meta = args[8], *tag = args[15];
    if (!PyList_Check(tensors) || !PyList_Check(offsets) || !PyBytes_Check(meta) || !PyBytes_Check(tag)) {
        PyErr_SetString(PyExc_TypeError, "publish: tensors and offsets are lists, meta and tag bytes");
        return NULL;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[2]), head_word = PyLong_AsSsize_t(args[3]);
    unsigned long long head = PyLong_AsUnsignedLongLong(args[4]);
    Py_ssize_t base = PyLong_AsSsize_t(args[5]), meta_off = PyLong_AsSsize_t(args[9]);
    unsigned long long seq = PyLong_AsUnsignedLongLong(args[10]);
    unsigned long code = PyLong_AsUnsignedLong(args[11]);
    unsigned long long block_len = PyLong_AsUnsignedLongLong(args[12]);
    double t0 = PyFloat_AsDouble(args[13]), t1 = PyFloat_AsDouble(args[14]);
    if (PyErr_Occurred())
        return NULL;
    Py_ssize_t nt = PyList_GET_SIZE(tensors);
    if (nt > D_MAX_TENSORS || PyList_GET_SIZE(offsets) != nt) {
        PyErr_SetString(PyExc_ValueError, "publish: too many tensors, or offsets do not match them");
        return NULL;
    }
    Py_buffer views[MAX_TENSORS_C];
    long kinds[MAX_TENSORS_C];
    const char *dtypes[MAX_TENSORS_C];
    Py_ssize_t dtype_lens[MAX_TENSORS_C];
    Py_ssize_t offs[MAX_TENSORS_C];
    Py_ssize_t got = 0;
    PyObject *result = NULL;
    Py_buffer out = {0}, ar = {0};
    int have_out = 0, have_ar = 0;
    for (; got < nt; got++) {
        PyObject *t = PyList_GET_ITEM(tensors, got);
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 3) {
            PyErr_SetString(PyExc_TypeError, "publish: each tensor is (array, kind, dtype string)");
            goto done;
        }
        kinds[got] = PyLong_AsLong(PyTuple_GET_ITEM(t, 1));
        dtypes[got] = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(t, 2), &dtype_lens[got]);
        offs[got] = PyLong_AsSsize_t(PyList_GET_ITEM(offsets, got));
        if (PyErr_Occurred() || dtypes[got] == NULL)
            goto done;
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(t, 0), &views[got], PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
            PyErr_Clear(); /* not contiguous, or no buffer: the Python twin copies it */
            result = Py_False;
            goto done;
        }
        if (!little_endian_format(views[got].format) || views[got].ndim > T_MAX_NDIM) {
            PyBuffer_Release(&views[got]);
            result = Py_False;
            goto done;
        }
    }
    if (PyObject_GetBuffer(args[0], &out, PyBUF_WRITABLE) < 0)
        goto done;
    have_out = 1;
    if (PyObject_GetBuffer(args[1], &ar, PyBUF_WRITABLE) < 0)
        goto done;
    have_ar = 1;
    Py_ssize_t mlen = PyBytes_GET_SIZE(meta);
    int meta_in_arena = mlen > D_META_INLINE_MAX;
    /* Every position is checked before the first byte is written. */
    if (pos < 0 || pos + D_SIZE > out.len || head_word < 0 || head_word + 8 > out.len || base < 0 ||
        (meta_in_arena && (meta_off < 0 || base + meta_off + mlen > ar.len))) {
        PyErr_SetString(PyExc_ValueError, "publish: a position lies outside the segment");
        goto done;
    }
    for (Py_ssize_t i = 0; i < nt; i++)
        if (offs[i] < 0 || base + offs[i] + views[i].len > ar.len) {
            PyErr_SetString(PyExc_ValueError, "publish: a tensor lies outside the arena");
            goto done;
        }
    char *arena = (char *)ar.buf, *d = (char *)out.buf + pos;
    /* 1. the data */
    for (Py_ssize_t i = 0; i < nt; i++)
        memcpy(arena + base + offs[i], views[i].buf, (size_t)views[i].len);
    if (meta_in_arena)
        memcpy(arena + base + meta_off, PyBytes_AS_STRING(meta), (size_t)mlen);
    /* 2. the descriptor (wire.pack_desc's order: inline metadata, fixed part, tensor headers) */
    else if (mlen)
        memcpy(d + D_META_INLINE_OFF, PyBytes_AS_STRING(meta), (size_t)mlen);
    memset(d, 0, (size_t)D_FIXED_SIZE);
    put_u64(d + D_SEQ, seq);
    put_u32(d + D_CODE, (uint32_t)code);
    put_u32(d + D_FLAGS, meta_in_arena ? (uint32_t)D_FLAG_META_IN_ARENA : 0);
    put_u64(d + D_BLOCK_OFF, (uint64_t)base);
    put_u64(d + D_BLOCK_LEN, block_len);
    put_u32(d + D_META_LEN, (uint32_t)mlen);
    put_u32(d + D_NTENSORS, (uint32_t)nt);
    put_u64(d + D_META_OFF, (uint64_t)(base + meta_off));
    put_f64(d + D_T0, t0);
    put_f64(d + D_T1, t1);
    Py_ssize_t tlen = PyBytes_GET_SIZE(tag);
    memcpy(d + D_TAG, PyBytes_AS_STRING(tag), (size_t)(tlen < D_TAG_MAX ? tlen : D_TAG_MAX));
    for (Py_ssize_t i = 0; i < nt; i++) {
        char *h = d + D_TENSORS_OFF + i * D_TENSOR_SLOT;
        memset(h, 0, (size_t)D_TENSOR_SLOT);
        put_u64(h + T_OFFSET, (uint64_t)(base + offs[i]));
        put_u64(h + T_NBYTES, (uint64_t)views[i].len);
        memcpy(h + T_DTYPE, dtypes[i], (size_t)(dtype_lens[i] < T_DTYPE_MAX ? dtype_lens[i] : T_DTYPE_MAX));
        h[T_NDIM] = (char)views[i].ndim;
        h[T_KIND] = (char)kinds[i];
        for (int k = 0; k < views[i].ndim; k++)
            put_i64(h + T_SHAPE + 8 * k, (int64_t)views[i].shape[k]);
    }
    /* 3. the head, last, with release ordering: it publishes steps 1 and 2 */
    __atomic_store_n((uint64_t *)((char *)out.buf + head_word), (uint64_t)(head + 1), __ATOMIC_RELEASE);
    result = Py_True;
done:
    for (Py_ssize_t i = 0; i < got; i++)
        PyBuffer_Release(&views[i]);
    if (have_out)
        PyBuffer_Release(&out);
    if (have_ar)
        PyBuffer_Release(&ar);
    if (result != NULL)
        Py_INCREF(result);
    return result;
#endif
}

static PyMethodDef methods[] = {
    {"configure", configure, METH_O, "configure(fields): the wire offsets (shmserve.shm.wire), once."},
    {"publish", (PyCFunction)(void (*)(void))publish, METH_FASTCALL,
     "publish(buf, arena, pos, head_word, head, base, tensors, offsets, meta, meta_off, seq, code, "
     "block_len, t0, t1, tag) -> bool: copy a call in and publish its descriptor (False: not a plain copy, "
     "nothing written)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_client", "The client's publish step in C.", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__client(void) { return PyModule_Create(&module); }
