/* The access log's JSON lines, a whole batch formatted in one call.
 *
 * The C twin of shmserve/http/access_log.py's _JsonLines: json_lines(items,
 * wall) takes the flat list of waiting entries (FIELDS items each, in the
 * order of access_log.Entry) and the offset from CLOCK_MONOTONIC to the wall
 * clock, and returns the batch as one str, every line ended by "\n", the
 * same text the Python twin writes character for character: the timestamp's
 * second through gmtime_r and strftime, the milliseconds rounded as '%.3f'
 * rounds them (put_ms), method and path escaped as orjson escapes a str of
 * their latin-1 code points. It returns None for an entry it does not take
 * (a field of another type, a client address outside latin-1, a time out of
 * range); the caller then formats the batch in Python.
 *
 * C, not Python, because the writer thread runs on the CPU the event loop
 * needs: formatting in Python cost ~20,000 instructions a line (callgrind),
 * ~12% of what the API worker spends on a request, taken from the loop's
 * throughput on a saturated machine. The GIL is held: a batch is what
 * arrived in FLUSH_S (0.1 s), a millisecond or two of work at full load.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <structmember.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "slots.h"

/* items of one entry: access_log.FIELDS */
#define FIELDS 10

typedef struct {
    char *p;
    Py_ssize_t len, cap;
} Buf;

static int reserve(Buf *b, Py_ssize_t more) {
    if (b->len + more <= b->cap)
        return 0;
    Py_ssize_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more)
        cap *= 2;
    char *p = PyMem_Realloc(b->p, (size_t)cap);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

/* room for every entry's fixed text and numbers (put_ms's long fallback reserves its own) */
#define ENTRY_ROOM 320

/* unchecked: `put_entry` reserved the entry's room first (one check an entry, not one a field) */
static inline int put(Buf *b, const char *s, Py_ssize_t n) {
    memcpy(b->p + b->len, s, (size_t)n);
    b->len += n;
    return 0;
}

#define PUT_LITERAL(b, s) put((b), (s), (Py_ssize_t)(sizeof(s) - 1))

/* `value` (bytes) as a JSON string literal of its latin-1 code points, escaped as orjson does:
 * the quote, the backslash, \b \t \n \f \r, other control characters as \u00xx; nothing else. */
static inline int put_quoted(Buf *b, PyObject *value) {
    static const char hex[] = "0123456789abcdef";
    const unsigned char *s = (const unsigned char *)PyBytes_AS_STRING(value);
    Py_ssize_t n = PyBytes_GET_SIZE(value);
    char *o = b->p + b->len;
    *o++ = '"';
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (c >= 0x20 && c != '"' && c != '\\') {
            *o++ = (char)c;
            continue;
        }
        *o++ = '\\';
        switch (c) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '\b': *o++ = 'b'; break;
        case '\t': *o++ = 't'; break;
        case '\n': *o++ = 'n'; break;
        case '\f': *o++ = 'f'; break;
        case '\r': *o++ = 'r'; break;
        default:
            *o++ = 'u'; *o++ = '0'; *o++ = '0';
            *o++ = hex[c >> 4]; *o++ = hex[c & 15];
        }
    }
    *o++ = '"';
    b->len = o - b->p;
    return 0;
}

/* the decimal digits of `v`, at least `width` of them (zeros in front) */
static inline int put_digits(Buf *b, uint64_t v, int width) {
    char text[24];
    char *end = text + sizeof text, *o = end;
    do {
        *--o = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (end - o < width)
        *--o = '0';
    return put(b, o, end - o);
}

/* '%d' % v */
static inline int put_int(Buf *b, long long v) {
    if (v < 0) {
        if (put(b, "-", 1) < 0)
            return -1;
        return put_digits(b, (uint64_t)0 - (uint64_t)v, 1);
    }
    return put_digits(b, (uint64_t)v, 1);
}

/* '%.3f' % ms. Python rounds the exact binary value to the nearest thousandth, ties to even; so
 * does this for 0 <= ms < 2**53 / 1000 with at most 63 fraction bits (ms = m * 2**-k, m < 2**53:
 * m * 1000 < 2**63, split at bit k), a few dozen instructions where PyOS_double_to_string, the
 * function the str formatting calls and the one used for every other value, costs ~1,500. */
static int put_ms(Buf *b, double ms) {
    if (ms == 0.0 && !signbit(ms))
        return PUT_LITERAL(b, "0.000");
    if (ms > 0.0 && ms < 9007199254740.992) {
        /* ms = m * 2**-k read off its IEEE 754 bits (frexp and ldexp, two libm calls, cost as much as the
         * rest): m the 53-bit significand with its implicit bit, k from the biased exponent */
        uint64_t bits;
        memcpy(&bits, &ms, sizeof bits);
        int biased = (int)(bits >> 52) & 0x7ff;
        int k = 1075 - biased;
        if (biased != 0 && k >= 1 && k <= 63) { /* a subnormal (biased 0) has no implicit bit: the slow way */
            uint64_t scaled = ((bits & ((UINT64_C(1) << 52) - 1)) | (UINT64_C(1) << 52)) * 1000u;
            uint64_t n = scaled >> k, rest = scaled & ((UINT64_C(1) << k) - 1), half = UINT64_C(1) << (k - 1);
            if (rest > half || (rest == half && (n & 1)))
                n++;
            if (put_digits(b, n / 1000, 1) < 0 || put(b, ".", 1) < 0)
                return -1;
            return put_digits(b, n % 1000, 3);
        }
    }
    char *text = PyOS_double_to_string(ms, 'f', 3, 0, NULL);
    if (text == NULL)
        return -1;
    Py_ssize_t n = (Py_ssize_t)strlen(text);
    int rc = reserve(b, n + ENTRY_ROOM) < 0 ? -1 : put(b, text, n);
    PyMem_Free(text);
    return rc;
}

/* a float field ('%.3f' takes ints too); 0 when `o` is neither */
static int as_double(PyObject *o, double *out) {
    if (PyFloat_Check(o))
        *out = PyFloat_AS_DOUBLE(o);
    else if (PyLong_Check(o)) {
        *out = PyLong_AsDouble(o);
        if (*out == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();
            return 0;
        }
    } else
        return 0;
    return 1;
}

/* an int field ('%d'); 0 when `o` is not an int that fits */
static int as_int(PyObject *o, long long *out) {
    if (!PyLong_Check(o))
        return 0;
    int overflow = 0;
    *out = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow || (*out == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 0;
    }
    return 1;
}

/* 1 when the entry at `e` was written, 0 when the Python twin must format the batch, -1 on an error */
static int put_entry(Buf *b, PyObject **e, double wall, long long *last, char *stamp) {
    double ts, seconds, runner_s;
    long long status, n_in, n_out;
    PyObject *client = e[1], *method = e[2], *path = e[3], *rid = e[9];
    if (!as_double(e[0], &ts) || !as_double(e[7], &seconds) || !as_double(e[8], &runner_s)
        || !as_int(e[4], &status) || !as_int(e[5], &n_in) || !as_int(e[6], &n_out)
        || !PyUnicode_Check(client) || PyUnicode_KIND(client) != PyUnicode_1BYTE_KIND
        || !PyBytes_Check(method) || !PyBytes_Check(path) || !PyBytes_Check(rid))
        return 0;
    ts += wall;
    if (!(ts >= 0.0 && ts < 253402300800.0)) /* a time gmtime gives a four-digit year for */
        return 0;
    long long second = (long long)ts; /* int(ts): truncation, ts >= 0 */
    if (second != *last) {
        time_t t = (time_t)second;
        struct tm tm;
        if (gmtime_r(&t, &tm) == NULL || strftime(stamp, 32, "%Y-%m-%dT%H:%M:%S", &tm) == 0)
            return 0;
        *last = second;
    }
    uint64_t micro = (uint64_t)((ts - (double)second) * 1e6); /* int(): truncation, >= 0 */
    if (reserve(b, ENTRY_ROOM + (Py_ssize_t)strlen(stamp) + PyUnicode_GET_LENGTH(client) + PyBytes_GET_SIZE(rid)
                   + 6 * (PyBytes_GET_SIZE(method) + PyBytes_GET_SIZE(path))) < 0)
        return -1;
    if (PUT_LITERAL(b, "{\"time\":\"") < 0 || put(b, stamp, (Py_ssize_t)strlen(stamp)) < 0 || put(b, ".", 1) < 0
        || put_digits(b, micro, 6) < 0 || PUT_LITERAL(b, "Z\",\"client\":\"") < 0
        || put(b, (const char *)PyUnicode_1BYTE_DATA(client), PyUnicode_GET_LENGTH(client)) < 0
        || PUT_LITERAL(b, "\",\"method\":") < 0 || put_quoted(b, method) < 0
        || PUT_LITERAL(b, ",\"path\":") < 0 || put_quoted(b, path) < 0
        || PUT_LITERAL(b, ",\"status\":") < 0 || put_int(b, status) < 0
        || PUT_LITERAL(b, ",\"bytes_in\":") < 0 || put_int(b, n_in) < 0
        || PUT_LITERAL(b, ",\"bytes_out\":") < 0 || put_int(b, n_out) < 0
        || PUT_LITERAL(b, ",\"duration_ms\":") < 0 || put_ms(b, seconds * 1e3) < 0
        || PUT_LITERAL(b, ",\"runner_ms\":") < 0 || put_ms(b, runner_s * 1e3) < 0
        || PUT_LITERAL(b, ",\"request_id\":\"") < 0
        || put(b, PyBytes_AS_STRING(rid), PyBytes_GET_SIZE(rid)) < 0 || PUT_LITERAL(b, "\"}\n") < 0)
        return -1;
    return 1;
}

static PyObject *json_lines(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *items;
    double wall;
    if (!PyArg_ParseTuple(args, "O!d:json_lines", &PyList_Type, &items, &wall))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(items);
    if (n % FIELDS != 0) {
        PyErr_Format(PyExc_ValueError, "json_lines: %zd items is not a whole number of %d-field entries", n, FIELDS);
        return NULL;
    }
    Buf b = {NULL, 0, 0};
    long long last = -1;
    char stamp[32] = "";
    PyObject *result = NULL;
    /* the list is ours to read: the writer took it from the queue; no Python code runs meanwhile */
    for (Py_ssize_t i = 0; i < n; i += FIELDS) {
        int rc = put_entry(&b, &PyList_GET_ITEM(items, i), wall, &last, stamp);
        if (rc < 0)
            goto done;
        if (rc == 0) {
            result = Py_NewRef(Py_None);
            goto done;
        }
    }
    /* bytes outside ASCII are latin-1 code points, as the Python twin's str holds them */
    result = PyUnicode_DecodeLatin1(b.p ? b.p : "", b.len, NULL);
done:
    PyMem_Free(b.p);
    return result;
}

/* ---- the response hook: Recorder ---------------------------------------------------------------
 *
 * The C twin of access_log.AccessLog._record: called by the protocol for every response as
 * hook(conn, request, status, body_bytes[, sink]), it queues the access line's FIELDS items on
 * `pending` (None: no access log) and a sampled request's (ctx, method, path, status, request ID, end
 * time) on `traced` (None: no tracing), with no Python frame: the Python twin cost the event loop
 * ~6,000 instructions a response (two frames while tracing was on: Observer.on_response around
 * record, and runner_seconds), this ~1,500. The items of one entry are all made before the first is
 * appended, and appending runs no Python code: the writer, which takes whole entries, never sees a
 * part of one. It never raises: a failure is handed to `failed(request, exc)`, which logs it.
 */
/* The request class (shmserve/http/request.py's Request) and where the slots read here live: `configure`
 * reads them from its member descriptors once, so a Request's fields are loaded with no attribute lookup
 * (~150 instructions each); any other object, or an empty slot, goes through PyObject_GetAttr. */
enum { R_METHOD, R_PATH, R_HEADERS, R_BODY, R_T_BEGIN, R_T_PARSED, R_REQUEST_ID, R_CTX, N_READ };
static const char *read_names[N_READ] = {"method", "path", "headers", "body", "t_begin", "t_parsed", "request_id",
                                         "ctx"};
static PyObject *read_attrs[N_READ];
static Py_ssize_t read_offsets[N_READ];
static PyTypeObject *request_type;

/* request.<name> (a new reference; NULL with an error set) */
static inline PyObject *field(PyObject *request, int i) {
    if (Py_IS_TYPE(request, request_type)) {
        PyObject *v = *(PyObject **)((char *)request + read_offsets[i]);
        if (v != NULL)
            return Py_NewRef(v);
    }
    return PyObject_GetAttr(request, read_attrs[i]);
}

static PyObject *configure(PyObject *Py_UNUSED(self), PyObject *cls) {
    if (!PyType_Check(cls) || ((PyTypeObject *)cls)->tp_dictoffset != 0) {
        PyErr_SetString(PyExc_TypeError, "configure(request_class): a class with __slots__ and no __dict__");
        return NULL;
    }
    Py_ssize_t offsets[N_READ];
    for (int i = 0; i < N_READ; i++) {
        PyObject *d = PyObject_GetAttr(cls, read_attrs[i]);
        if (d == NULL)
            return NULL;
        int ok = Py_IS_TYPE(d, &PyMemberDescr_Type) && ((PyMemberDescrObject *)d)->d_member->type == T_OBJECT_EX
                 && ((PyMemberDescrObject *)d)->d_common.d_type == (PyTypeObject *)cls;
        if (ok)
            offsets[i] = ((PyMemberDescrObject *)d)->d_member->offset;
        Py_DECREF(d);
        if (!ok) {
            PyErr_Format(PyExc_ValueError, "configure: %R.%s is not a slot of it", cls, read_names[i]);
            return NULL;
        }
    }
    memcpy(read_offsets, offsets, sizeof offsets);
    Py_INCREF(cls);
    Py_XSETREF(request_type, (PyTypeObject *)cls);
    Py_RETURN_NONE;
}

/* pending: list, or None; traced: list, or None; client_of: conn -> "host:port" (asked when conn has no
 * access_client yet); runner_seconds: sink -> float, for a sink the fast loop here does not read;
 * failed: (request, exc) -> None; random: () -> float in [0, 1) */
#define RECORDER_FIELDS(X) X(pending) X(traced) X(client_of) X(runner_seconds) X(failed) X(random)

typedef struct {
    PyObject_HEAD
    RECORDER_FIELDS(SLOTS_DECLARE)
    double rate;         /* below 1: that fraction of the fast, successful responses is logged */
    double slow_s;       /* slower responses are always logged */
    vectorcallfunc vectorcall;
} Recorder;

static PyObject *s_access_client, *s_parent, *s_submit, *s_complete, *s_dash;

/* `o or b"-"` (a new reference) */
static PyObject *or_dash(PyObject *o) {
    int t = PyObject_IsTrue(o);
    if (t < 0)
        return NULL;
    return Py_NewRef(t ? o : s_dash);
}

/* the summed round trips of the runner calls in `sink` (access_log.runner_seconds); -1 and an error set on failure */
static int sum_runner_seconds(Recorder *r, PyObject *sink, double *out) {
    double total = 0.0;
    if (PyList_Check(sink)) {
        Py_ssize_t n = PyList_GET_SIZE(sink);
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *item = PyList_GET_ITEM(sink, i);
            if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 3 || !PyDict_CheckExact(PyTuple_GET_ITEM(item, 2)))
                goto slow;
            PyObject *t = PyTuple_GET_ITEM(item, 2);
            PyObject *complete = PyDict_GetItemWithError(t, s_complete); /* borrowed */
            if (complete == NULL) {
                if (PyErr_Occurred())
                    return -1;
                continue;
            }
            PyObject *submit = PyDict_GetItemWithError(t, s_submit);
            if (submit == NULL) {
                if (PyErr_Occurred())
                    return -1;
                continue;
            }
            if (!PyFloat_CheckExact(complete) || !PyFloat_CheckExact(submit))
                goto slow;
            total += PyFloat_AS_DOUBLE(complete) - PyFloat_AS_DOUBLE(submit);
        }
        *out = total;
        return 0;
    }
slow:; /* anything else: what the Python function says */
    PyObject *v = PyObject_CallOneArg(r->runner_seconds, sink);
    if (v == NULL)
        return -1;
    *out = PyFloat_AsDouble(v);
    Py_DECREF(v);
    return (*out == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

/* 0 when queued (or sampled out), -1 with an error set */
static int record(Recorder *r, PyObject *conn, PyObject *request, PyObject *status, PyObject *body_bytes,
                  PyObject *sink) {
    PyObject *items[FIELDS] = {NULL};
    PyObject *ctx = NULL, *t = NULL, *parent = NULL;
    int rc = -1;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* time.monotonic's clock */
    double now = (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
    ctx = field(request, R_CTX);
    if (ctx == NULL)
        goto done;
    if (r->traced != Py_None && ctx != Py_None) { /* a sampled request: its spans are due */
        parent = PyObject_GetAttr(ctx, s_parent);
        if (parent == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_AttributeError))
                goto done;
            PyErr_Clear();
        } else if (parent != Py_None) {
            PyObject *method = field(request, R_METHOD), *path = NULL, *rid = NULL, *end = NULL, *entry = NULL;
            if (method != NULL && (path = field(request, R_PATH)) != NULL
                && (rid = field(request, R_REQUEST_ID)) != NULL && (end = PyFloat_FromDouble(now)) != NULL)
                entry = PyTuple_Pack(6, ctx, method, path, status, rid, end);
            Py_XDECREF(method);
            Py_XDECREF(path);
            Py_XDECREF(rid);
            Py_XDECREF(end);
            if (entry == NULL)
                goto done;
            int appended = PyList_Append(r->traced, entry);
            Py_DECREF(entry);
            if (appended < 0)
                goto done;
        }
    }
    if (r->pending == Py_None) {
        rc = 0;
        goto done;
    }
    t = field(request, R_T_BEGIN);
    if (t == NULL)
        goto done;
    int truth = PyObject_IsTrue(t);
    if (truth < 0)
        goto done;
    if (!truth) {
        Py_SETREF(t, field(request, R_T_PARSED));
        if (t == NULL)
            goto done;
    }
    double begin = PyFloat_AsDouble(t);
    if (begin == -1.0 && PyErr_Occurred())
        goto done;
    double seconds = now - begin;
    if (r->rate < 1.0 && seconds < r->slow_s) {
        long code = PyLong_AsLong(status);
        if (code == -1 && PyErr_Occurred())
            goto done;
        if (code < 500) {
            PyObject *draw = PyObject_CallNoArgs(r->random);
            if (draw == NULL)
                goto done;
            double x = PyFloat_AsDouble(draw);
            Py_DECREF(draw);
            if (x == -1.0 && PyErr_Occurred())
                goto done;
            if (x >= r->rate) {
                rc = 0;
                goto done;
            }
        }
    }
    PyObject *client = PyObject_GetAttr(conn, s_access_client);
    if (client == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError))
            goto done;
        PyErr_Clear();
        client = PyObject_CallOneArg(r->client_of, conn);
        if (client == NULL)
            goto done;
    }
    items[1] = client;
    if (sink == NULL)
        sink = ctx; /* a RequestContext is its runner calls' traces */
    double runner_s = 0.0;
    int has = PyObject_IsTrue(sink);
    if (has < 0 || (has && sum_runner_seconds(r, sink, &runner_s) < 0))
        goto done;
    PyObject *v;
    if ((items[0] = PyFloat_FromDouble(now)) == NULL || (v = field(request, R_METHOD)) == NULL)
        goto done;
    items[2] = or_dash(v);
    Py_DECREF(v);
    if (items[2] == NULL || (v = field(request, R_PATH)) == NULL)
        goto done;
    items[3] = or_dash(v);
    Py_DECREF(v);
    if (items[3] == NULL || (v = field(request, R_BODY)) == NULL)
        goto done;
    Py_ssize_t n_in = PyObject_Length(v);
    Py_DECREF(v);
    if (n_in < 0 || (items[5] = PyLong_FromSsize_t(n_in)) == NULL || (items[7] = PyFloat_FromDouble(seconds)) == NULL
        || (items[8] = PyFloat_FromDouble(runner_s)) == NULL || (v = field(request, R_REQUEST_ID)) == NULL)
        goto done;
    items[9] = or_dash(v);
    Py_DECREF(v);
    if (items[9] == NULL)
        goto done;
    items[4] = Py_NewRef(status);
    items[6] = Py_NewRef(body_bytes);
    for (int i = 0; i < FIELDS; i++) /* no Python code runs between these: the entry is queued whole */
        if (PyList_Append(r->pending, items[i]) < 0)
            goto done; /* out of memory: the list is broken anyway */
    rc = 0;
done:
    for (int i = 0; i < FIELDS; i++)
        Py_XDECREF(items[i]);
    Py_XDECREF(ctx);
    Py_XDECREF(t);
    Py_XDECREF(parent);
    return rc;
}

static PyObject *recorder_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    Recorder *r = (Recorder *)self;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if ((kwnames != NULL && PyTuple_GET_SIZE(kwnames)) || nargs < 4 || nargs > 5) {
        PyErr_SetString(PyExc_TypeError, "record(conn, request, status, body_bytes, sink=None): 4 or 5 positional arguments");
        return NULL;
    }
    PyObject *sink = nargs == 5 && args[4] != Py_None ? args[4] : NULL;
    if (record(r, args[0], args[1], args[2], args[3], sink) < 0) {
        PyObject *type, *exc, *tb;
        PyErr_Fetch(&type, &exc, &tb);
        PyErr_NormalizeException(&type, &exc, &tb);
        if (tb != NULL)
            PyException_SetTraceback(exc, tb);
        PyObject *res = PyObject_CallFunctionObjArgs(r->failed, args[1], exc, NULL);
        Py_XDECREF(type);
        Py_XDECREF(exc);
        Py_XDECREF(tb);
        if (res == NULL)
            PyErr_WriteUnraisable(self);
        Py_XDECREF(res);
    }
    Py_RETURN_NONE;
}

static PyObject *recorder_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"pending", "traced", "rate", "slow_s", "client_of", "runner_seconds", "failed", "random",
                             NULL};
    PyObject *pending, *traced, *client_of, *runner_seconds, *failed, *random;
    double rate, slow_s;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOddOOOO:Recorder", kwlist, &pending, &traced, &rate, &slow_s,
                                     &client_of, &runner_seconds, &failed, &random))
        return NULL;
    if ((pending != Py_None && !PyList_Check(pending)) || (traced != Py_None && !PyList_Check(traced))) {
        PyErr_SetString(PyExc_TypeError, "Recorder: pending and traced are lists or None");
        return NULL;
    }
    Recorder *r = (Recorder *)type->tp_alloc(type, 0);
    if (r == NULL)
        return NULL;
    r->pending = Py_NewRef(pending);
    r->traced = Py_NewRef(traced);
    r->client_of = Py_NewRef(client_of);
    r->runner_seconds = Py_NewRef(runner_seconds);
    r->failed = Py_NewRef(failed);
    r->random = Py_NewRef(random);
    r->rate = rate;
    r->slow_s = slow_s;
    r->vectorcall = recorder_vectorcall;
    return (PyObject *)r;
}

SLOTS_FUNCTIONS(recorder, Recorder, RECORDER_FIELDS)

static PyTypeObject RecorderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "shmserve._native._accesslog.Recorder",
    .tp_basicsize = sizeof(Recorder),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "Recorder(pending, traced, rate, slow_s, client_of, runner_seconds, failed, random): the response hook "
              "record(conn, request, status, body_bytes, sink=None) of access_log.AccessLog, in C.",
    .tp_new = recorder_new,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(Recorder, vectorcall),
    .tp_traverse = (traverseproc)recorder_traverse,
    .tp_clear = (inquiry)recorder_clear,
    .tp_dealloc = (destructor)recorder_dealloc,
};

/* ---- the request's context: Beginner ------------------------------------------------------------
 *
 * The C twin of the common case of observe.Observer.begin(request, api, asked), called by the app for
 * every API request while the access log or tracing is on: a request that did not ask for its timeline,
 * has no traceparent and is not drawn for a trace (with the tracer's rate below 1) gets a fresh
 * `context_type` (observe.RequestContext, a list subclass: allocated empty, no __init__ runs, as list()
 * makes one) as request.ctx when the access log is on, else None. Every other request is handed to the
 * Python twin: `begin(request, api, asked)` when nothing was drawn (asked, a traceparent, rate 1), or
 * `sampled(request, api)` when the draw here picked it. So the draw is made once per request either way.
 */
/* context_type: a subclass of list (checked by beginner_new); begin: the Python twin; sampled:
 * (request, api) -> the context of a request drawn for a trace; random: () -> float in [0, 1), None
 * without a tracer */
#define BEGINNER_FIELDS(X) X(context_type) X(begin) X(sampled) X(random)

typedef struct {
    PyObject_HEAD
    BEGINNER_FIELDS(SLOTS_DECLARE)
    double rate;       /* the tracer's sample rate; negative: no tracer */
    int logged;        /* the access log is on */
    vectorcallfunc vectorcall;
} Beginner;

static PyObject *s_traceparent;

static PyObject *beginner_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    Beginner *b = (Beginner *)self;
    if ((kwnames != NULL && PyTuple_GET_SIZE(kwnames)) || PyVectorcall_NARGS(nargsf) != 3) {
        PyErr_SetString(PyExc_TypeError, "begin(request, api, asked): 3 positional arguments");
        return NULL;
    }
    PyObject *request = args[0];
    int asked = PyObject_IsTrue(args[2]);
    if (asked < 0)
        return NULL;
    if (asked || b->rate >= 1.0)
        return PyObject_Vectorcall(b->begin, args, 3, NULL);
    if (b->rate >= 0.0) {
        PyObject *headers = field(request, R_HEADERS);
        if (headers == NULL)
            return NULL;
        int has = PyDict_CheckExact(headers) ? PyDict_Contains(headers, s_traceparent) : 1; /* else: Python decides */
        Py_DECREF(headers);
        if (has < 0)
            return NULL;
        if (has)
            return PyObject_Vectorcall(b->begin, args, 3, NULL);
        PyObject *draw = PyObject_CallNoArgs(b->random);
        if (draw == NULL)
            return NULL;
        double x = PyFloat_AsDouble(draw);
        Py_DECREF(draw);
        if (x == -1.0 && PyErr_Occurred())
            return NULL;
        if (x < b->rate)
            return PyObject_Vectorcall(b->sampled, args, 2, NULL);
    }
    if (!b->logged)
        Py_RETURN_NONE;
    PyTypeObject *context_type = (PyTypeObject *)b->context_type;
    PyObject *ctx = context_type->tp_alloc(context_type, 0);
    if (ctx == NULL)
        return NULL;
    if (Py_IS_TYPE(request, request_type)) /* what setting the slot does */
        Py_XSETREF(*(PyObject **)((char *)request + read_offsets[R_CTX]), Py_NewRef(ctx));
    else if (PyObject_SetAttr(request, read_attrs[R_CTX], ctx) < 0) {
        Py_DECREF(ctx);
        return NULL;
    }
    return ctx;
}

static PyObject *beginner_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"context_type", "rate", "logged", "begin", "sampled", "random", NULL};
    PyObject *context_type, *begin, *sampled, *random;
    double rate;
    int logged;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!dpOOO:Beginner", kwlist, &PyType_Type, &context_type, &rate,
                                     &logged, &begin, &sampled, &random))
        return NULL;
    if (!PyType_IsSubtype((PyTypeObject *)context_type, &PyList_Type)) {
        PyErr_SetString(PyExc_TypeError, "Beginner: context_type is a subclass of list");
        return NULL;
    }
    Beginner *b = (Beginner *)type->tp_alloc(type, 0);
    if (b == NULL)
        return NULL;
    b->context_type = Py_NewRef(context_type);
    b->begin = Py_NewRef(begin);
    b->sampled = Py_NewRef(sampled);
    b->random = Py_NewRef(random);
    b->rate = rate;
    b->logged = logged;
    b->vectorcall = beginner_vectorcall;
    return (PyObject *)b;
}

SLOTS_FUNCTIONS(beginner, Beginner, BEGINNER_FIELDS)

static PyTypeObject BeginnerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "shmserve._native._accesslog.Beginner",
    .tp_basicsize = sizeof(Beginner),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "Beginner(context_type, rate, logged, begin, sampled, random): observe.Observer.begin(request, api, "
              "asked) in C for the requests that are only access-logged; the others go to `begin` or `sampled`.",
    .tp_new = beginner_new,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(Beginner, vectorcall),
    .tp_traverse = (traverseproc)beginner_traverse,
    .tp_clear = (inquiry)beginner_clear,
    .tp_dealloc = (destructor)beginner_dealloc,
};

#define JSON_LINES_DOC                                                                                     \
    "json_lines(items, wall) -> str or None: the JSON lines of the flat list of access log entries, each " \
    "ended by a newline; None where the Python formatter must decide."
static PyMethodDef methods[] = {
    {"json_lines", json_lines, METH_VARARGS, JSON_LINES_DOC},
    {"configure", configure, METH_O,
     "configure(request_class): read the fields of its instances from their slots (Recorder, Beginner)"},
    {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_accesslog", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__accesslog(void) {
    static const char *names[] = {"access_client", "parent", "submit", "complete"};
    PyObject **slots[] = {&s_access_client, &s_parent, &s_submit, &s_complete};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if ((*slots[i] = PyUnicode_InternFromString(names[i])) == NULL)
            return NULL;
    for (int i = 0; i < N_READ; i++)
        if ((read_attrs[i] = PyUnicode_InternFromString(read_names[i])) == NULL)
            return NULL;
    if ((s_dash = PyBytes_FromStringAndSize("-", 1)) == NULL || (s_traceparent = PyBytes_FromString("traceparent")) == NULL
        || PyType_Ready(&RecorderType) < 0
        || PyType_Ready(&BeginnerType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Recorder", (PyObject *)&RecorderType) < 0
        || PyModule_AddObjectRef(m, "Beginner", (PyObject *)&BeginnerType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
