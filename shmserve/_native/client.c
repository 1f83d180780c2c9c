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
#include "slots.h"
#include <stdint.h>
#include <string.h>
#include <semaphore.h>
#include <fcntl.h>
#include <time.h>

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

/* The publish itself (see the top of this file): 1 written, 0 refused (nothing written), -1 an error set.
 * `a` holds publish's 16 arguments in its order, except that a[2] (pos) and a[4] (head), a[13] and a[14]
 * (t0, t1) are taken from `pos`, `head`, `t0`, `t1`. */
static int do_publish(PyObject *const *a, Py_ssize_t pos, unsigned long long head, double t0, double t1) {
    if (!configured) {
        PyErr_SetString(PyExc_RuntimeError, "shmserve._native._client: configure() was not called");
        return -1;
    }
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
    (void)a, (void)pos, (void)head, (void)t0, (void)t1;
    return 0; /* the Python twin packs little endian on any host */
#else
    PyObject *const *args = a;
    PyObject *tensors = args[6], *offsets = args[7], *meta = args[8], *tag = args[15];
    if (!PyList_Check(tensors) || !PyList_Check(offsets) || !PyBytes_Check(meta) || !PyBytes_Check(tag)) {
        PyErr_SetString(PyExc_TypeError, "publish: tensors and offsets are lists, meta and tag bytes");
        return -1;
    }
    Py_ssize_t head_word = PyLong_AsSsize_t(args[3]);
    Py_ssize_t base = PyLong_AsSsize_t(args[5]), meta_off = PyLong_AsSsize_t(args[9]);
    unsigned long long seq = PyLong_AsUnsignedLongLong(args[10]);
    unsigned long code = PyLong_AsUnsignedLong(args[11]);
    unsigned long long block_len = PyLong_AsUnsignedLongLong(args[12]);
    if (PyErr_Occurred())
        return -1;
    Py_ssize_t nt = PyList_GET_SIZE(tensors);
    if (nt > D_MAX_TENSORS || PyList_GET_SIZE(offsets) != nt) {
        PyErr_SetString(PyExc_ValueError, "publish: too many tensors, or offsets do not match them");
        return -1;
    }
    Py_buffer views[MAX_TENSORS_C];
    long kinds[MAX_TENSORS_C];
    const char *dtypes[MAX_TENSORS_C];
    Py_ssize_t dtype_lens[MAX_TENSORS_C];
    Py_ssize_t offs[MAX_TENSORS_C];
    Py_ssize_t got = 0;
    int result = -1;
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
            result = 0;
            goto done;
        }
        if (!little_endian_format(views[got].format) || views[got].ndim > T_MAX_NDIM) {
            PyBuffer_Release(&views[got]);
            result = 0;
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
    result = 1;
done:
    for (Py_ssize_t i = 0; i < got; i++)
        PyBuffer_Release(&views[i]);
    if (have_out)
        PyBuffer_Release(&out);
    if (have_ar)
        PyBuffer_Release(&ar);
    return result;
#endif
}

static PyObject *publish(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 16) {
        PyErr_SetString(PyExc_TypeError, "publish takes 16 arguments");
        return NULL;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[2]);
    unsigned long long head = PyLong_AsUnsignedLongLong(args[4]);
    double t0 = PyFloat_AsDouble(args[13]), t1 = PyFloat_AsDouble(args[14]);
    if (PyErr_Occurred())
        return NULL;
    int r = do_publish(args, pos, head, t0, t1);
    if (r < 0)
        return NULL;
    return Py_NewRef(r ? Py_True : Py_False);
}

/* -- submit: a call's publish and the worker's doorbell post, in one C call ----------------------------
 *
 * `open_doorbell(name)` opens the worker's doorbell semaphore (a second handle on the one the link's
 * `Signal` has: glibc maps a name once per process and counts its openers) as a capsule that closes it
 * when dropped; None when it cannot be opened (a test's signal without a semaphore behind it).
 *
 * `submit(buf, arena, first, slots, head_word, bell, doorbell, twin, n, seq, code, base, block_len,
 * tensors, offsets, meta, meta_off, deadline, tag, post)` is what shmserve/publish.py's Python twin
 * does: take the submit time (CLOCK_MONOTONIC, time.monotonic's clock), publish record `n` at
 * first + (n % slots) * desc_size (t0 = the submit time, t1 = deadline or 0), post the doorbell when
 * `post` (sem_post on `bell`; `doorbell.post()` when there is no bell, or sem_post failed), and return
 * (submit time, descriptor offset). A call publish refuses (not a plain copy) is handed whole to `twin`,
 * called with the arguments from `n` on. The first eight are bound once per link (functools.partial). */
static const char *BELL = "shmserve.doorbell";

static void bell_close(PyObject *capsule) {
    sem_t *sem = PyCapsule_GetPointer(capsule, BELL);
    if (sem != NULL)
        sem_close(sem);
}

static PyObject *open_doorbell(PyObject *self, PyObject *name) {
    (void)self;
    if (!PyUnicode_Check(name))
        Py_RETURN_NONE;
    const char *s = PyUnicode_AsUTF8(name);
    if (s == NULL)
        return NULL;
    sem_t *sem = sem_open(s, 0);
    if (sem == SEM_FAILED)
        Py_RETURN_NONE;
    PyObject *capsule = PyCapsule_New(sem, BELL, bell_close);
    if (capsule == NULL)
        sem_close(sem);
    return capsule;
}

static PyObject *submit(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 20) {
        PyErr_SetString(PyExc_TypeError, "submit takes 20 arguments");
        return NULL;
    }
    Py_ssize_t first = PyLong_AsSsize_t(args[2]), slots = PyLong_AsSsize_t(args[3]);
    unsigned long long n = PyLong_AsUnsignedLongLong(args[8]);
    double t1 = args[17] == Py_None ? 0.0 : PyFloat_AsDouble(args[17]);
    int post = PyObject_IsTrue(args[19]);
    if (PyErr_Occurred() || post < 0)
        return NULL;
    if (slots <= 0) {
        PyErr_SetString(PyExc_ValueError, "submit: a ring of no slots");
        return NULL;
    }
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    double t0 = (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
    Py_ssize_t pos = first + (Py_ssize_t)(n % (unsigned long long)slots) * D_SIZE;
    /* publish's argument order: buf, arena, pos, head_word, head, base, tensors, offsets, meta, meta_off,
       seq, code, block_len, t0, t1, tag */
    PyObject *a[16] = {args[0], args[1], NULL, args[4], NULL, args[11], args[13], args[14], args[15], args[16],
                       args[9], args[10], args[12], NULL, NULL, args[18]};
    int r = do_publish(a, pos, n, t0, t1);
    if (r < 0)
        return NULL;
    if (r == 0) /* not a plain copy: the Python twin does all of it */
        return PyObject_Vectorcall(args[7], args + 8, 12, NULL);
    if (post) {
        sem_t *sem = args[5] == Py_None ? NULL : PyCapsule_GetPointer(args[5], BELL);
        if (sem == NULL || sem_post(sem) != 0) {
            PyErr_Clear();
            PyObject *done = PyObject_CallMethod(args[6], "post", NULL);
            if (done == NULL)
                return NULL;
            Py_DECREF(done);
        }
    }
    PyObject *out = PyTuple_New(2);
    if (out == NULL)
        return NULL;
    PyObject *when = PyFloat_FromDouble(t0), *where = PyLong_FromSsize_t(pos);
    if (when == NULL || where == NULL) {
        Py_XDECREF(when);
        Py_XDECREF(where);
        Py_DECREF(out);
        return NULL;
    }
    PyTuple_SET_ITEM(out, 0, when);
    PyTuple_SET_ITEM(out, 1, where);
    return out;
}

/* -- consume: the response ring's new records, as Ring.consume returns them ---------------------------
 *
 * `configure_consume(fixed, tensor, consts, ResponseDesc, TensorMeta)` takes, from shmserve/shm/wire.py:
 * `fixed`, the fixed part's fields in record order as (offset, struct code) with code one of Q, I, d
 * (the request tag is not read); `tensor`, the tensor header's (offset, size) by name; `consts`, the
 * descriptor's sizes. `consume(buf, arena, first, slots, head_word, tail_word, tail)` then reads every
 * record published since `tail` (the head read with acquire ordering) and stores the new tail:
 * [(descriptor offset, ResponseDesc, [TensorMeta, ...], metadata bytes), ...], what the Python twin
 * `Ring.consume` builds. Out-of-line metadata is read from `arena` (clamped to it, as a slice is).
 * `tail` comes last: a link binds the rest once (functools.partial, shmserve/publish.py `consumer`). */
#define MAX_FIXED_C 24
static int consume_ready = 0;
static Py_ssize_t C_NFIXED, C_FIXED_OFF[MAX_FIXED_C];
static char C_FIXED_CODE[MAX_FIXED_C];
static Py_ssize_t C_DESC_SIZE, C_TENSORS_OFF, C_TENSOR_SLOT, C_META_INLINE_OFF, C_MAX_TENSORS, C_MAX_NDIM,
    C_FLAG_META, C_I_FLAGS = -1, C_I_META_LEN = -1, C_I_NTENSORS = -1, C_I_META_OFF = -1;
static Py_ssize_t CT_OFFSET, CT_NBYTES, CT_DTYPE, CT_DTYPE_LEN, CT_NDIM, CT_KIND, CT_SEGMENT, CT_GENERATION, CT_SHAPE;
static PyObject *C_RECORD = NULL, *C_TENSOR_META = NULL;

static int pair(PyObject *table, const char *name, Py_ssize_t *off, Py_ssize_t *size) {
    PyObject *v = PyDict_GetItemString(table, name); /* borrowed */
    if (v == NULL || !PyArg_ParseTuple(v, "nn", off, size)) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_KeyError, "configure_consume: missing field %s", name);
        return -1;
    }
    return 0;
}

static PyObject *configure_consume(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *fixed, *tens, *consts, *record, *tmeta;
    if (!PyArg_ParseTuple(args, "O!O!O!OO", &PyList_Type, &fixed, &PyDict_Type, &tens, &PyDict_Type, &consts,
                          &record, &tmeta))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(fixed);
    if (n > MAX_FIXED_C || !PyType_Check(record) || !PyType_IsSubtype((PyTypeObject *)record, &PyTuple_Type) ||
        !PyType_Check(tmeta) || !PyType_IsSubtype((PyTypeObject *)tmeta, &PyTuple_Type)) {
        PyErr_SetString(PyExc_ValueError, "configure_consume: too many fields, or records that are not tuples");
        return NULL;
    }
    consume_ready = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        const char *code;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(fixed, i), "ns", &C_FIXED_OFF[i], &code))
            return NULL;
        if (strcmp(code, "Q") && strcmp(code, "I") && strcmp(code, "d")) {
            PyErr_Format(PyExc_ValueError, "configure_consume: field code %s is not Q, I or d", code);
            return NULL;
        }
        C_FIXED_CODE[i] = code[0];
    }
    C_NFIXED = n;
    Py_ssize_t sz, ndim_size, kind_size, seg_size, gen_size, shape_size, off_size, nb_size;
    struct { const char *name; Py_ssize_t *dst; } table[] = {
        {"desc_size", &C_DESC_SIZE}, {"tensors_off", &C_TENSORS_OFF}, {"tensor_slot", &C_TENSOR_SLOT},
        {"meta_inline_off", &C_META_INLINE_OFF}, {"max_tensors", &C_MAX_TENSORS}, {"max_ndim", &C_MAX_NDIM},
        {"flag_meta_in_arena", &C_FLAG_META}, {"i_flags", &C_I_FLAGS}, {"i_meta_len", &C_I_META_LEN},
        {"i_ntensors", &C_I_NTENSORS}, {"i_meta_off", &C_I_META_OFF},
    };
    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++)
        if (get_field(consts, table[i].name, table[i].dst) < 0)
            return NULL;
    if (pair(tens, "offset", &CT_OFFSET, &off_size) || pair(tens, "nbytes", &CT_NBYTES, &nb_size) ||
        pair(tens, "dtype", &CT_DTYPE, &CT_DTYPE_LEN) || pair(tens, "ndim", &CT_NDIM, &ndim_size) ||
        pair(tens, "kind", &CT_KIND, &kind_size) || pair(tens, "segment", &CT_SEGMENT, &seg_size) ||
        pair(tens, "generation", &CT_GENERATION, &gen_size) || pair(tens, "shape", &CT_SHAPE, &shape_size))
        return NULL;
    (void)sz;
    Py_ssize_t idx[] = {C_I_FLAGS, C_I_META_LEN, C_I_NTENSORS, C_I_META_OFF};
    for (size_t i = 0; i < 4; i++)
        if (idx[i] < 0 || idx[i] >= n || C_FIXED_CODE[idx[i]] == 'd') {
            PyErr_SetString(PyExc_ValueError, "configure_consume: a count field is not an integer field");
            return NULL;
        }
    if (off_size != 8 || nb_size != 8 || ndim_size != 1 || kind_size != 1 || seg_size != 1 || gen_size != 4 ||
        shape_size != 8 * C_MAX_NDIM || C_TENSORS_OFF + C_MAX_TENSORS * C_TENSOR_SLOT > C_DESC_SIZE) {
        PyErr_SetString(PyExc_ValueError, "configure_consume: layout outside what this module was built for");
        return NULL;
    }
    Py_INCREF(record);
    Py_INCREF(tmeta);
    Py_XSETREF(C_RECORD, record);
    Py_XSETREF(C_TENSOR_META, tmeta);
    consume_ready = 1;
    Py_RETURN_NONE;
}

static inline uint64_t get_u64(const char *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline uint32_t get_u32(const char *p) { uint32_t v; memcpy(&v, p, 4); return v; }

/* One tensor header as TensorMeta(offset, nbytes, dtype, shape, kind, segment, generation). */
static PyObject *tensor_meta(const char *th) {
    unsigned ndim = (unsigned char)th[CT_NDIM];
    if (ndim > (unsigned)C_MAX_NDIM)
        return PyErr_Format(PyExc_ValueError, "consume: a result tensor of %u dimensions", ndim);
    Py_ssize_t dl = CT_DTYPE_LEN;
    while (dl > 0 && th[CT_DTYPE + dl - 1] == 0) /* bytes.rstrip(b"\0"), as the Python twin */
        dl--;
    PyObject *tm = PyTuple_Type.tp_alloc((PyTypeObject *)C_TENSOR_META, 7);
    if (tm == NULL)
        return NULL;
    PyObject *shape = PyTuple_New(ndim);
    PyObject *dt = PyUnicode_DecodeUTF8(th + CT_DTYPE, dl, "strict");
    if (shape == NULL || dt == NULL) {
        Py_XDECREF(shape);
        Py_XDECREF(dt);
        Py_DECREF(tm);
        return NULL;
    }
    for (unsigned j = 0; j < ndim; j++) {
        int64_t v;
        memcpy(&v, th + CT_SHAPE + 8 * j, 8);
        PyObject *dim = PyLong_FromLongLong(v);
        if (dim == NULL) {
            Py_DECREF(shape);
            Py_DECREF(dt);
            Py_DECREF(tm);
            return NULL;
        }
        PyTuple_SET_ITEM(shape, j, dim);
    }
    PyTuple_SET_ITEM(tm, 2, dt);
    PyTuple_SET_ITEM(tm, 3, shape);
    PyObject *ints[5] = {PyLong_FromUnsignedLongLong(get_u64(th + CT_OFFSET)),
                         PyLong_FromUnsignedLongLong(get_u64(th + CT_NBYTES)),
                         PyLong_FromLong((unsigned char)th[CT_KIND]), PyLong_FromLong((unsigned char)th[CT_SEGMENT]),
                         PyLong_FromUnsignedLong((unsigned long)get_u32(th + CT_GENERATION))};
    static const int at[5] = {0, 1, 4, 5, 6};
    int bad = 0;
    for (int i = 0; i < 5; i++) {
        if (ints[i] == NULL) {
            bad = 1;
            ints[i] = Py_NewRef(Py_None);
        }
        PyTuple_SET_ITEM(tm, at[i], ints[i]);
    }
    if (bad) {
        Py_DECREF(tm);
        return NULL;
    }
    return tm;
}

/* One record: (pos, ResponseDesc, [TensorMeta, ...], meta). */
static PyObject *response_record(const char *base, Py_ssize_t buf_len, Py_ssize_t pos, const char *arena,
                                 Py_ssize_t arena_len) {
    const char *d = base + pos;
    PyObject *fixed = PyTuple_Type.tp_alloc((PyTypeObject *)C_RECORD, C_NFIXED);
    if (fixed == NULL)
        return NULL;
    uint64_t ints[MAX_FIXED_C] = {0};
    for (Py_ssize_t i = 0; i < C_NFIXED; i++) {
        const char *p = d + C_FIXED_OFF[i];
        PyObject *v;
        if (C_FIXED_CODE[i] == 'd') {
            double x;
            memcpy(&x, p, 8);
            v = PyFloat_FromDouble(x);
        } else {
            ints[i] = C_FIXED_CODE[i] == 'Q' ? get_u64(p) : get_u32(p);
            v = PyLong_FromUnsignedLongLong(ints[i]);
        }
        if (v == NULL) {
            Py_DECREF(fixed);
            return NULL;
        }
        PyTuple_SET_ITEM(fixed, i, v);
    }
    uint64_t meta_len = ints[C_I_META_LEN], nt = ints[C_I_NTENSORS];
    PyObject *meta;
    if (!meta_len) {
        meta = PyBytes_FromStringAndSize(NULL, 0);
    } else if (ints[C_I_FLAGS] & (uint64_t)C_FLAG_META) { /* arena[off : off + len], clamped as a slice is */
        uint64_t start = ints[C_I_META_OFF], end = start + meta_len;
        if (start > (uint64_t)arena_len)
            start = (uint64_t)arena_len;
        if (end > (uint64_t)arena_len || end < start)
            end = (uint64_t)arena_len;
        meta = PyBytes_FromStringAndSize(arena + start, (Py_ssize_t)(end - start));
    } else {
        uint64_t start = (uint64_t)(pos + C_META_INLINE_OFF), end = start + meta_len;
        if (end > (uint64_t)buf_len)
            end = (uint64_t)buf_len;
        meta = PyBytes_FromStringAndSize(base + start, (Py_ssize_t)(end - start));
    }
    if (meta == NULL) {
        Py_DECREF(fixed);
        return NULL;
    }
    PyObject *tensors = NULL;
    if (nt > (uint64_t)C_MAX_TENSORS)
        PyErr_Format(PyExc_ValueError, "consume: a response names %llu tensors (at most %zd)",
                     (unsigned long long)nt, C_MAX_TENSORS);
    else
        tensors = PyList_New((Py_ssize_t)nt);
    for (uint64_t k = 0; tensors != NULL && k < nt; k++) {
        PyObject *tm = tensor_meta(d + C_TENSORS_OFF + (Py_ssize_t)k * C_TENSOR_SLOT);
        if (tm == NULL)
            Py_CLEAR(tensors);
        else
            PyList_SET_ITEM(tensors, (Py_ssize_t)k, tm);
    }
    if (tensors == NULL) {
        Py_DECREF(fixed);
        Py_DECREF(meta);
        return NULL;
    }
    PyObject *rec = PyTuple_New(4);
    if (rec == NULL) {
        Py_DECREF(fixed);
        Py_DECREF(meta);
        Py_DECREF(tensors);
        return NULL;
    }
    PyTuple_SET_ITEM(rec, 0, PyLong_FromSsize_t(pos));
    if (PyTuple_GET_ITEM(rec, 0) == NULL) {
        PyTuple_SET_ITEM(rec, 0, Py_NewRef(Py_None));
        PyTuple_SET_ITEM(rec, 1, fixed);
        PyTuple_SET_ITEM(rec, 2, tensors);
        PyTuple_SET_ITEM(rec, 3, meta);
        Py_DECREF(rec);
        return NULL;
    }
    PyTuple_SET_ITEM(rec, 1, fixed);
    PyTuple_SET_ITEM(rec, 2, tensors);
    PyTuple_SET_ITEM(rec, 3, meta);
    return rec;
}

static PyObject *consume(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "consume takes 7 arguments");
        return NULL;
    }
    if (!consume_ready) {
        PyErr_SetString(PyExc_RuntimeError, "shmserve._native._client: configure_consume() was not called");
        return NULL;
    }
    Py_ssize_t first = PyLong_AsSsize_t(args[2]), slots = PyLong_AsSsize_t(args[3]);
    Py_ssize_t head_word = PyLong_AsSsize_t(args[4]), tail_word = PyLong_AsSsize_t(args[5]);
    unsigned long long tail = PyLong_AsUnsignedLongLong(args[6]);
    if (PyErr_Occurred())
        return NULL;
    Py_buffer buf, ar;
    if (PyObject_GetBuffer(args[0], &buf, PyBUF_WRITABLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[1], &ar, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&buf);
        return NULL;
    }
    PyObject *list = NULL;
    char *base = (char *)buf.buf;
    if (slots <= 0 || first < 0 || first + slots * C_DESC_SIZE > buf.len || head_word < 0 || head_word + 8 > buf.len ||
        tail_word < 0 || tail_word + 8 > buf.len) {
        PyErr_SetString(PyExc_ValueError, "consume: the ring lies outside the segment");
        goto done;
    }
    /* acquire: every descriptor and result published before this head is read after it */
    uint64_t head = __atomic_load_n((uint64_t *)(base + head_word), __ATOMIC_ACQUIRE);
    list = PyList_New(0);
    if (list == NULL || head <= tail)
        goto done;
    for (uint64_t t = tail; t < head; t++) {
        Py_ssize_t pos = first + (Py_ssize_t)((t % (uint64_t)slots) * (uint64_t)C_DESC_SIZE);
        PyObject *rec = response_record(base, buf.len, pos, (const char *)ar.buf, ar.len);
        if (rec == NULL || PyList_Append(list, rec) < 0) {
            Py_XDECREF(rec);
            Py_CLEAR(list);
            goto done;
        }
        Py_DECREF(rec);
    }
    __atomic_store_n((uint64_t *)(base + tail_word), (uint64_t)head, __ATOMIC_RELEASE);
done:
    PyBuffer_Release(&ar);
    PyBuffer_Release(&buf);
    return list;
}

/* -- Pending: one call in flight, the C twin of shmserve/link.py's `Pending` --------------------------
 *
 * The same fifteen attributes, each a slot as the Python class's are (a member that holds any object),
 * made by one C call: Pending(seq, link, slot, block, method, submit, sink) with done and abandoned
 * False and the rest None, as the Python __init__ leaves them. */
#define PENDING_FIELDS(X) X(seq) X(link) X(slot) X(block) X(method) X(submit) X(done) X(result) X(error) \
    X(lock) X(future) X(loop) X(abandoned) X(sink) X(stream)
typedef struct {
    PyObject_HEAD
    PENDING_FIELDS(SLOTS_DECLARE)
} PendingObject;

SLOTS_FUNCTIONS(pending, PendingObject, PENDING_FIELDS)

static PyObject *pending_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    PyObject *a[7];
    if ((kwds != NULL && PyDict_GET_SIZE(kwds)) ||
        !PyArg_UnpackTuple(args, "Pending", 7, 7, &a[0], &a[1], &a[2], &a[3], &a[4], &a[5], &a[6])) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "Pending(seq, link, slot, block, method, submit, sink)");
        return NULL;
    }
    PendingObject *p = (PendingObject *)type->tp_alloc(type, 0);
    if (p == NULL)
        return NULL;
    p->seq = Py_NewRef(a[0]);
    p->link = Py_NewRef(a[1]);
    p->slot = Py_NewRef(a[2]);
    p->block = Py_NewRef(a[3]);
    p->method = Py_NewRef(a[4]);
    p->submit = Py_NewRef(a[5]);
    p->sink = Py_NewRef(a[6]);
    p->done = Py_NewRef(Py_False);
    p->abandoned = Py_NewRef(Py_False);
    p->result = Py_NewRef(Py_None);
    p->error = Py_NewRef(Py_None);
    p->lock = Py_NewRef(Py_None);
    p->future = Py_NewRef(Py_None);
    p->loop = Py_NewRef(Py_None);
    p->stream = Py_NewRef(Py_None);
    return (PyObject *)p;
}

#define MEMBER(f) SLOTS_MEMBER_(PendingObject, f)
static PyMemberDef pending_members[] = {PENDING_FIELDS(MEMBER) {NULL, 0, 0, 0, NULL}};
#undef MEMBER

static PyTypeObject PendingType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmserve._native._client.Pending",
    .tp_basicsize = sizeof(PendingObject),
    .tp_doc = "One call in flight (the C twin of shmserve.link.Pending).",
    SLOTS_TYPE_SLOTS(pending),
    .tp_new = pending_new,
};

static PyMethodDef methods[] = {
    {"configure", configure, METH_O, "configure(fields): the wire offsets (shmserve.shm.wire), once."},
    {"publish", (PyCFunction)(void (*)(void))publish, METH_FASTCALL,
     "publish(buf, arena, pos, head_word, head, base, tensors, offsets, meta, meta_off, seq, code, "
     "block_len, t0, t1, tag) -> bool: copy a call in and publish its descriptor (False: not a plain copy, "
     "nothing written)."},
    {"open_doorbell", open_doorbell, METH_O,
     "open_doorbell(name) -> capsule or None: a handle on the doorbell semaphore `name`, closed when dropped."},
    {"submit", (PyCFunction)(void (*)(void))submit, METH_FASTCALL,
     "submit(buf, arena, first, slots, head_word, bell, doorbell, twin, n, seq, code, base, block_len, tensors, "
     "offsets, meta, meta_off, deadline, tag, post) -> (submit time, descriptor offset): publish record n and "
     "post the doorbell (a refused call goes to twin(n, ...))."},
    {"configure_consume", configure_consume, METH_VARARGS,
     "configure_consume(fixed, tensor, consts, ResponseDesc, TensorMeta): the response layout (shmserve.shm.wire), once."},
    {"consume", (PyCFunction)(void (*)(void))consume, METH_FASTCALL,
     "consume(buf, arena, first, slots, head_word, tail_word, tail) -> [(pos, ResponseDesc, [TensorMeta], meta)]: "
     "every response since `tail`, marked consumed (Ring.consume's records)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_client", "The client's per-call steps in C.", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__client(void) {
    if (PyType_Ready(&PendingType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Pending", (PyObject *)&PendingType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
