/* The runner worker's per-call channel work in one C call each (shmserve._native._worker).
 *
 * Python twins: shmserve/worker/rows.py (publish_rows_py, consume_py). Both write and read
 * the records declared in shmserve/shm/wire.py; no offset is written down here: configure()
 * is called once at import with wire's field tables (DESC_FIELDS, TENSOR_FIELDS, ...), and
 * tests/unit/test_worker_rows.py checks that both paths leave identical bytes.
 *
 * Why C: a batch of 64 calls cost the interpreter ~2,000 instructions per call to read a
 * descriptor (struct unpacking, a NamedTuple per tensor) and ~6,000 to write a result (a view
 * per call, np.copyto, struct packing); here each is a few hundred.
 *
 * Memory ordering (docs/transport.md): the client reads a response only after it reads
 * resp_head, so every descriptor and data byte is stored before the head, which is published
 * with a release store; request heads are read with an acquire load before any descriptor.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "slots.h"
#include <stdint.h>
#include <string.h>

typedef struct {
    Py_ssize_t off, size;
} Field;

/* the layout, from shmserve.shm.wire (configure) */
typedef struct {
    int ready;
    Field seq, code, flags, block_off, block_len, meta_len, ntensors, meta_off, t[5], batch_size, cancel;
    Field t_offset, t_nbytes, t_dtype, t_ndim, t_kind, t_segment, t_generation, t_shape;
    Py_ssize_t desc_size, fixed_size, tensors_off, tensor_slot, meta_inline_off, meta_inline_max, max_tensors, max_ndim;
    Py_ssize_t block_header, block_state, block_length;
    uint64_t flag_meta_in_arena, block_busy;
    PyObject *tensor_meta; /* wire.TensorMeta, a tuple subclass */
} Layout;

static Layout L;

static int get_field(PyObject *table, const char *name, Field *out) {
    PyObject *v = PyDict_GetItemString(table, name); /* borrowed */
    if (v == NULL || !PyArg_ParseTuple(v, "nn", &out->off, &out->size)) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_KeyError, "wire field %s missing", name);
        return -1;
    }
    return 0;
}

static int get_size(PyObject *consts, const char *name, Py_ssize_t *out) {
    PyObject *v = PyDict_GetItemString(consts, name);
    if (v == NULL) {
        PyErr_Format(PyExc_KeyError, "wire constant %s missing", name);
        return -1;
    }
    *out = PyLong_AsSsize_t(v);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

/* configure(desc_fields, tensor_fields, block_fields, consts, TensorMeta) */
static PyObject *configure(PyObject *self, PyObject *args) {
    PyObject *desc, *tens, *block, *consts, *meta_type;
    (void)self;
    Layout N = {0}; /* filled, checked, then taken: a refused layout leaves the current one */
    if (!PyArg_ParseTuple(args, "O!O!O!O!O", &PyDict_Type, &desc, &PyDict_Type, &tens, &PyDict_Type, &block,
                          &PyDict_Type, &consts, &meta_type))
        return NULL;
    static const char *tnames[5] = {"t0", "t1", "t2", "t3", "t4"};
    Field st, ln;
    Py_ssize_t flag, busy;
    if (get_field(desc, "seq", &N.seq) || get_field(desc, "code", &N.code) || get_field(desc, "flags", &N.flags) ||
        get_field(desc, "block_off", &N.block_off) || get_field(desc, "block_len", &N.block_len) ||
        get_field(desc, "meta_len", &N.meta_len) || get_field(desc, "ntensors", &N.ntensors) ||
        get_field(desc, "meta_off", &N.meta_off) || get_field(desc, "batch_size", &N.batch_size) ||
        get_field(desc, "cancel", &N.cancel))
        return NULL;
    for (int i = 0; i < 5; i++)
        if (get_field(desc, tnames[i], &N.t[i]))
            return NULL;
    if (get_field(tens, "offset", &N.t_offset) || get_field(tens, "nbytes", &N.t_nbytes) ||
        get_field(tens, "dtype", &N.t_dtype) || get_field(tens, "ndim", &N.t_ndim) ||
        get_field(tens, "kind", &N.t_kind) || get_field(tens, "segment", &N.t_segment) ||
        get_field(tens, "generation", &N.t_generation) || get_field(tens, "shape", &N.t_shape))
        return NULL;
    if (get_field(block, "state", &st) || get_field(block, "length", &ln))
        return NULL;
    if (get_size(consts, "desc_size", &N.desc_size) || get_size(consts, "fixed_size", &N.fixed_size) || get_size(consts, "tensors_off", &N.tensors_off) ||
        get_size(consts, "tensor_slot", &N.tensor_slot) || get_size(consts, "meta_inline_off", &N.meta_inline_off) ||
        get_size(consts, "meta_inline_max", &N.meta_inline_max) || get_size(consts, "max_tensors", &N.max_tensors) ||
        get_size(consts, "max_ndim", &N.max_ndim) || get_size(consts, "block_header", &N.block_header) ||
        get_size(consts, "flag_meta_in_arena", &flag) || get_size(consts, "block_busy", &busy))
        return NULL;
    /* the widths this code reads and writes: a layout change that alters one is refused here */
    Field *u64s[] = {&N.seq, &N.block_off, &N.block_len, &N.meta_off, &N.t_offset, &N.t_nbytes, &st, &ln, &N.cancel};
    Field *u32s[] = {&N.code, &N.flags, &N.meta_len, &N.ntensors, &N.batch_size};
    for (size_t i = 0; i < sizeof u64s / sizeof u64s[0]; i++)
        if (u64s[i]->size != 8)
            return PyErr_Format(PyExc_ValueError, "wire layout: a u64 field is %zd bytes", u64s[i]->size);
    for (size_t i = 0; i < sizeof u32s / sizeof u32s[0]; i++)
        if (u32s[i]->size != 4)
            return PyErr_Format(PyExc_ValueError, "wire layout: a u32 field is %zd bytes", u32s[i]->size);
    for (int i = 0; i < 5; i++)
        if (N.t[i].size != 8)
            return PyErr_Format(PyExc_ValueError, "wire layout: a time field is not 8 bytes");
    if (N.t_ndim.size != 1 || N.t_kind.size != 1 || N.t_segment.size != 1 || N.t_generation.size != 4 || N.t_shape.size != 8 * N.max_ndim || N.t_dtype.size > 16)
        return PyErr_Format(PyExc_ValueError, "wire layout: unexpected tensor header field sizes");
    if (N.tensors_off + N.max_tensors * N.tensor_slot > N.desc_size || N.fixed_size > N.meta_inline_off)
        return PyErr_Format(PyExc_ValueError, "wire layout: a descriptor's parts overlap");
    N.block_state = st.off;
    N.block_length = ln.off;
    N.flag_meta_in_arena = (uint64_t)flag;
    N.block_busy = (uint64_t)busy;
    Py_INCREF(meta_type);
    N.tensor_meta = meta_type;
    N.ready = 1;
    PyObject *old = L.tensor_meta;
    L = N;
    Py_XDECREF(old);
    Py_RETURN_NONE;
}

static inline void put64(char *p, uint64_t v) { memcpy(p, &v, 8); }
static inline void put32(char *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void putf(char *p, double v) { memcpy(p, &v, 8); }
static inline uint64_t get64(const char *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline uint32_t get32(const char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline double getf(const char *p) { double v; memcpy(&v, p, 8); return v; }

/* publish_rows(buf, first, slots, head, head_word, arena, src, src_off, entries, dtype, kind, trailing,
 *              times, batch_size) -> new head
 *
 * buf: the segment (writable); first: byte offset of response slot 0; head: responses published so
 * far; head_word: byte offset of resp_head; arena: byte offset of the response arena in buf; src:
 * the batch's C-contiguous output (a buffer); src_off: unused base offset into src (bytes);
 * entries: [(seq, block_off, block_len, row_byte_start, nbytes, items, dequeue), ...] with blocks
 * already reserved; dtype: the wire dtype bytes; kind: the tensor kind; trailing: the output's
 * shape after dim 0; times: (batch start, model start, model end, written).
 * Every entry gets: its block header (busy, length), its rows copied to the block's data, its
 * response descriptor (status OK, one tensor, no metadata); then the head moves once. */
static PyObject *publish_rows(PyObject *self, PyObject *args) {
    Py_buffer buf, src;
    Py_ssize_t first, slots, head_word, arena, src_off, kind;
    unsigned long long head;
    PyObject *entries, *trailing;
    const char *dtype;
    Py_ssize_t dtype_len;
    double t1, t2, t3, t4;
    unsigned int batch_size;
    (void)self;
    if (!L.ready) {
        PyErr_SetString(PyExc_RuntimeError, "configure() was not called");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "w*nnKnny*nO!y#nO!(dddd)I", &buf, &first, &slots, &head, &head_word, &arena, &src,
                          &src_off, &PyList_Type, &entries, &dtype, &dtype_len, &kind, &PyTuple_Type, &trailing,
                          &t1, &t2, &t3, &t4, &batch_size))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t ndim_rest = PyTuple_GET_SIZE(trailing);
    int64_t dims[16];
    if (ndim_rest + 1 > L.max_ndim || dtype_len > L.t_dtype.size || slots <= 0) {
        PyErr_SetString(PyExc_ValueError, "publish_rows: too many dims, a dtype too long or no slots");
        goto done;
    }
    for (Py_ssize_t i = 0; i < ndim_rest; i++) {
        dims[i + 1] = PyLong_AsLongLong(PyTuple_GET_ITEM(trailing, i));
        if (dims[i + 1] == -1 && PyErr_Occurred())
            goto done;
    }
    char *base = (char *)buf.buf;
    const char *data = (const char *)src.buf;
    Py_ssize_t n = PyList_GET_SIZE(entries);
    /* every check before the first store: a bad entry writes nothing */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *e = PyList_GET_ITEM(entries, i);
        unsigned long long seq, boff, blen, start, nb, items;
        double t0;
        if (!PyArg_ParseTuple(e, "KKKKKKd", &seq, &boff, &blen, &start, &nb, &items, &t0))
            goto done;
        if (arena + (Py_ssize_t)boff + (Py_ssize_t)blen > buf.len || blen < L.block_header + nb ||
            src_off + (Py_ssize_t)(start + nb) > src.len) {
            PyErr_SetString(PyExc_ValueError, "publish_rows: an entry's block or rows lie outside their buffer");
            goto done;
        }
    }
    if (first + slots * L.desc_size > buf.len || head_word + 8 > buf.len) {
        PyErr_SetString(PyExc_ValueError, "publish_rows: the ring lies outside the buffer");
        goto done;
    }
    Py_ssize_t stride = L.desc_size;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *e = PyList_GET_ITEM(entries, i);
        unsigned long long seq = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(e, 0));
        uint64_t boff = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(e, 1));
        uint64_t blen = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(e, 2));
        uint64_t start = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(e, 3));
        uint64_t nb = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(e, 4));
        uint64_t items = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(e, 5));
        double t0 = PyFloat_AsDouble(PyTuple_GET_ITEM(e, 6));
        char *block = base + arena + boff;
        put64(block + L.block_state, L.block_busy);
        put64(block + L.block_length, blen);
        uint64_t data_off = boff + L.block_header;
        memcpy(base + arena + data_off, data + src_off + start, nb);
        char *d = base + first + (Py_ssize_t)((head % (uint64_t)slots) * (uint64_t)stride);
        memset(d, 0, L.fixed_size);
        put64(d + L.seq.off, seq);
        put32(d + L.code.off, 0);
        put32(d + L.flags.off, 0);
        put64(d + L.block_off.off, boff);
        put64(d + L.block_len.off, blen);
        put32(d + L.meta_len.off, 0);
        put32(d + L.ntensors.off, 1);
        put64(d + L.meta_off.off, data_off + nb);
        putf(d + L.t[0].off, t0);
        putf(d + L.t[1].off, t1);
        putf(d + L.t[2].off, t2);
        putf(d + L.t[3].off, t3);
        putf(d + L.t[4].off, t4);
        put32(d + L.batch_size.off, batch_size);
        char *th = d + L.tensors_off;
        memset(th, 0, L.tensor_slot);
        put64(th + L.t_offset.off, data_off);
        put64(th + L.t_nbytes.off, nb);
        memcpy(th + L.t_dtype.off, dtype, dtype_len);
        th[L.t_ndim.off] = (char)(ndim_rest + 1);
        th[L.t_kind.off] = (char)kind;
        dims[0] = (int64_t)items;
        memcpy(th + L.t_shape.off, dims, 8 * (ndim_rest + 1));
        head++;
    }
    /* release: the descriptors and data above are visible before the client can see the head */
    __atomic_store_n((uint64_t *)(base + head_word), (uint64_t)head, __ATOMIC_RELEASE);
    result = PyLong_FromUnsignedLongLong(head);
done:
    PyBuffer_Release(&buf);
    PyBuffer_Release(&src);
    return result;
}

/* consume(buf, first, slots, tail, head_word, tail_word, arena, arena_len)
 *   -> (new tail, [(pos, seq, method, meta, [TensorMeta, ...], submit, deadline, cancelled), ...])
 * Reads every request published since `tail` and stores the new tail (the worker's req_tail);
 * cancelled: whether its cancel word already said the caller gave up (seq + 1), as it read. */
static PyObject *consume(PyObject *self, PyObject *args) {
    Py_buffer buf;
    Py_ssize_t first, slots, head_word, tail_word, arena, arena_len;
    unsigned long long tail;
    (void)self;
    if (!L.ready) {
        PyErr_SetString(PyExc_RuntimeError, "configure() was not called");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "w*nnKnnnn", &buf, &first, &slots, &tail, &head_word, &tail_word, &arena,
                          &arena_len))
        return NULL;
    PyObject *out = NULL, *list = NULL;
    char *base = (char *)buf.buf;
    Py_ssize_t stride = L.desc_size;
    if (slots <= 0 || first + slots * stride > buf.len || head_word + 8 > buf.len || tail_word + 8 > buf.len ||
        arena + arena_len > buf.len) {
        PyErr_SetString(PyExc_ValueError, "consume: the ring lies outside the buffer");
        goto done;
    }
    /* acquire: descriptors published before this head are read after it */
    uint64_t head = __atomic_load_n((uint64_t *)(base + head_word), __ATOMIC_ACQUIRE);
    list = PyList_New(0);
    if (list == NULL)
        goto done;
    for (; tail < head; tail++) {
        Py_ssize_t pos = first + (Py_ssize_t)((tail % (uint64_t)slots) * (uint64_t)stride);
        const char *d = base + pos;
        uint32_t flags = get32(d + L.flags.off), meta_len = get32(d + L.meta_len.off);
        uint32_t nt = get32(d + L.ntensors.off);
        uint64_t meta_off = get64(d + L.meta_off.off);
        PyObject *meta;
        if (meta_len == 0) {
            meta = PyBytes_FromStringAndSize(NULL, 0);
        } else if (flags & L.flag_meta_in_arena) {
            if (meta_off + meta_len > (uint64_t)arena_len) {
                PyErr_SetString(PyExc_ValueError, "consume: a call's metadata lies outside the arena");
                goto done;
            }
            meta = PyBytes_FromStringAndSize(base + arena + meta_off, meta_len);
        } else {
            if (meta_len > (uint64_t)L.meta_inline_max) {
                PyErr_SetString(PyExc_ValueError, "consume: inline metadata longer than its room");
                goto done;
            }
            meta = PyBytes_FromStringAndSize(d + L.meta_inline_off, meta_len);
        }
        if (meta == NULL)
            goto done;
        if (nt > (uint32_t)L.max_tensors) {
            Py_DECREF(meta);
            PyErr_Format(PyExc_ValueError, "consume: a call has %u tensors (at most %zd)", nt, L.max_tensors);
            goto done;
        }
        PyObject *tensors = PyList_New(nt);
        if (tensors == NULL) {
            Py_DECREF(meta);
            goto done;
        }
        for (uint32_t k = 0; k < nt; k++) {
            const char *th = d + L.tensors_off + k * L.tensor_slot;
            unsigned ndim = (unsigned char)th[L.t_ndim.off];
            if (ndim > (unsigned)L.max_ndim) {
                Py_DECREF(meta);
                Py_DECREF(tensors);
                PyErr_Format(PyExc_ValueError, "consume: a tensor of %u dims", ndim);
                goto done;
            }
            Py_ssize_t dl = 0;
            while (dl < L.t_dtype.size && th[L.t_dtype.off + dl] != 0)
                dl++;
            PyObject *shape = PyTuple_New(ndim);
            PyObject *tm = PyTuple_Type.tp_alloc((PyTypeObject *)L.tensor_meta, 7); /* with segment, generation */
            PyObject *dt = PyUnicode_DecodeASCII(th + L.t_dtype.off, dl, "strict");
            if (shape == NULL || tm == NULL || dt == NULL) {
                Py_XDECREF(shape);
                Py_XDECREF(tm);
                Py_XDECREF(dt);
                Py_DECREF(meta);
                Py_DECREF(tensors);
                goto done;
            }
            for (unsigned j = 0; j < ndim; j++) {
                int64_t v;
                memcpy(&v, th + L.t_shape.off + 8 * j, 8);
                PyTuple_SET_ITEM(shape, j, PyLong_FromLongLong(v));
            }
            PyTuple_SET_ITEM(tm, 0, PyLong_FromUnsignedLongLong(get64(th + L.t_offset.off)));
            PyTuple_SET_ITEM(tm, 1, PyLong_FromUnsignedLongLong(get64(th + L.t_nbytes.off)));
            PyTuple_SET_ITEM(tm, 2, dt);
            PyTuple_SET_ITEM(tm, 3, shape);
            PyTuple_SET_ITEM(tm, 4, PyLong_FromLong((unsigned char)th[L.t_kind.off]));
            PyTuple_SET_ITEM(tm, 5, PyLong_FromLong((unsigned char)th[L.t_segment.off]));
            PyTuple_SET_ITEM(tm, 6, PyLong_FromUnsignedLong((unsigned long)get32(th + L.t_generation.off)));
            PyList_SET_ITEM(tensors, k, tm);
        }
        uint64_t seq = get64(d + L.seq.off);
        /* relaxed: the client may set the word at any time; the dispatch loop reads it again before the model */
        uint64_t cancel = __atomic_load_n((const uint64_t *)(d + L.cancel.off), __ATOMIC_RELAXED);
        PyObject *rec = Py_BuildValue("(nKINNddO)", pos, (unsigned long long)seq, (unsigned int)get32(d + L.code.off),
                                      meta, tensors, getf(d + L.t[0].off), getf(d + L.t[1].off),
                                      cancel == seq + 1 ? Py_True : Py_False);
        if (rec == NULL || PyList_Append(list, rec) < 0) {
            Py_XDECREF(rec);
            goto done;
        }
        Py_DECREF(rec);
    }
    if (PyList_GET_SIZE(list))
        __atomic_store_n((uint64_t *)(base + tail_word), (uint64_t)tail, __ATOMIC_RELEASE);
    out = Py_BuildValue("(KO)", tail, list);
done:
    Py_XDECREF(list);
    PyBuffer_Release(&buf);
    return out;
}

/* -- Request: one call read from a channel, the C twin of shmserve/worker/channel.py's `Request` ---------
 *
 * The same eleven attributes, each a slot as the Python class's are (a member that holds any object),
 * made by one C call: Request(seq, channel, slot, method, meta, tensors, submit, deadline, dequeue
 * [, cancelled]) with items 1 and cancelled False unless given, as the Python __init__ leaves them. */
#define REQUEST_FIELDS(X) X(seq) X(channel) X(slot) X(method) X(meta) X(tensors) X(submit) X(deadline) \
    X(items) X(dequeue) X(cancelled)
typedef struct {
    PyObject_HEAD
    REQUEST_FIELDS(SLOTS_DECLARE)
} RequestObject;

SLOTS_FUNCTIONS(request, RequestObject, REQUEST_FIELDS)

static PyObject *request_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    PyObject *a[10] = {NULL};
    if ((kwds != NULL && PyDict_GET_SIZE(kwds)) ||
        !PyArg_UnpackTuple(args, "Request", 9, 10, &a[0], &a[1], &a[2], &a[3], &a[4], &a[5], &a[6], &a[7], &a[8],
                           &a[9])) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError,
                            "Request(seq, channel, slot, method, meta, tensors, submit, deadline, dequeue[, cancelled])");
        return NULL;
    }
    RequestObject *r = (RequestObject *)type->tp_alloc(type, 0);
    if (r == NULL)
        return NULL;
    static PyObject *one = NULL;
    if (one == NULL && (one = PyLong_FromLong(1)) == NULL) {
        Py_DECREF(r);
        return NULL;
    }
    r->seq = Py_NewRef(a[0]);
    r->channel = Py_NewRef(a[1]);
    r->slot = Py_NewRef(a[2]);
    r->method = Py_NewRef(a[3]);
    r->meta = Py_NewRef(a[4]);
    r->tensors = Py_NewRef(a[5]);
    r->submit = Py_NewRef(a[6]);
    r->deadline = Py_NewRef(a[7]);
    r->dequeue = Py_NewRef(a[8]);
    r->items = Py_NewRef(one);
    r->cancelled = Py_NewRef(a[9] != NULL ? a[9] : Py_False);
    return (PyObject *)r;
}

#define MEMBER(f) SLOTS_MEMBER_(RequestObject, f)
static PyMemberDef request_members[] = {REQUEST_FIELDS(MEMBER) {NULL, 0, 0, 0, NULL}};
#undef MEMBER

static PyTypeObject RequestType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmserve._native._worker.Request",
    .tp_basicsize = sizeof(RequestObject),
    .tp_doc = "One call read from a channel (the C twin of shmserve.worker.channel.Request).",
    SLOTS_TYPE_SLOTS(request),
    .tp_new = request_new,
};

static PyMethodDef methods[] = {
    {"configure", configure, METH_VARARGS, "Take the wire layout (offsets and sizes) from shmserve.shm.wire."},
    {"publish_rows", publish_rows, METH_VARARGS, "Write a batch's OK results (rows of one array) and publish them."},
    {"consume", consume, METH_VARARGS, "Read every request published since a tail and store the new tail."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_worker", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__worker(void) {
    if (PyType_Ready(&RequestType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Request", (PyObject *)&RequestType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
