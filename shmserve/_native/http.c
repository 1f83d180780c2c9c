/* shmserve._native._http: the common HTTP/1.1 request, parsed in one C call.
 *
 * Why hand-written: this is the API worker's hot path. httptools (llhttp) is
 * fast C itself, but it reports what it parses through Python callbacks —
 * on_message_begin, on_url, one on_header per header, on_headers_complete,
 * on_body, on_message_complete — so a request with five headers costs ten
 * Python calls before the application sees it (~10% of the worker's CPU in
 * the profile of issue #13). `parse` builds the finished `Request` objects
 * itself, as many as the buffer holds, in one call.
 *
 * It only takes the plain case, and stops at the first request that is not:
 *
 *   - a request line ``METHOD SP origin-form-target SP HTTP/1.1 CRLF`` with a
 *     method of GET POST PUT DELETE HEAD OPTIONS PATCH and a target that
 *     starts with "/" and holds printable ASCII only;
 *   - header lines ``token ":" OWS value CRLF`` (value bytes: HTAB, SP,
 *     0x21-0x7E, 0x80-0xFF; the leading OWS is not part of it, the trailing is,
 *     as llhttp does), then CRLF;
 *   - no Transfer-Encoding, Expect or Upgrade header, at most one
 *     Content-Length and it all digits, a Connection (or Proxy-Connection,
 *     which llhttp reads as one) header, if any, of exactly "keep-alive" (any
 *     case): so the request keeps the connection open;
 *   - within the limits (`max_url`, `max_header` counted both as the reader
 *     counts them and as raw bytes, `max_body`), and complete in the buffer.
 *
 * Everything else (HTTP/1.0, ``Connection: close``, chunked bodies,
 * ``Expect: 100-continue``, upgrades, a request cut off by the end of the read,
 * malformed bytes, a limit exceeded) is left where it starts, for the caller's
 * httptools path (shmserve/http/reader.py), which then answers it exactly as
 * without this module. Empty lines before a request line are skipped, as llhttp
 * skips them.
 *
 * parse(data, start, request_class, t_begin, max_url, max_header, max_body, max_count)
 *     -> (requests, end)
 *
 * `requests` is a list of what ``request_class(method, url, headers, body,
 * True, None, t_begin)`` builds (header names lower-cased, the last of a
 * repeated name kept — what the reader's on_header builds), at most
 * `max_count` of them; `end` is the offset in `data` after the last one taken
 * (>= start). `configure(request_class, pipeline_high)` comes first, once
 * (reader.py at import): the objects are filled in here, slot by slot, not
 * through __init__.
 *
 * take(data, t_begin, queue, limits, reader) -> end
 *
 * is what RequestReader.feed does with `parse` at the start of a read, in one
 * call (every read of the API worker comes here): the requests are appended
 * to the reader's queue, within its limits, counted in reader.completed, and
 * reading pauses (reader.conn.pause_reading()) once more than
 * `pipeline_high` are queued.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <string.h>
#include <time.h>

/* 1: an RFC 9110 tchar (header names) */
static unsigned char is_tchar[256];
/* 1: a byte llhttp takes in a header value (HTAB, SP, VCHAR, obs-text) */
static unsigned char is_vchar[256];

/* bytes objects shared by every request: methods and common header names (bytes are immutable) */
static const char *method_names[] = {"GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"};
#define N_METHODS (sizeof(method_names) / sizeof(method_names[0]))
static PyObject *method_objs[N_METHODS];
static Py_ssize_t method_lens[N_METHODS];

static const char *common_names[] = {
    "host", "user-agent", "accept", "accept-encoding", "accept-language", "content-type", "content-length",
    "connection", "authorization", "x-request-id", "traceparent", "tracestate", "x-tensor-dtype",
    "x-tensor-shape", "cache-control", "origin", "referer", "cookie", "x-forwarded-for", "keep-alive",
};
#define N_COMMON (sizeof(common_names) / sizeof(common_names[0]))
static PyObject *common_objs[N_COMMON];
static Py_ssize_t common_lens[N_COMMON];

static PyObject *empty_bytes;

/* The request class (shmserve/http/request.py's Request) and where each of its slots lives: `configure`
 * reads them from the class's member descriptors, so the objects are built here without running its
 * Python __init__ (~350 ns a request). `build` must set every slot as that __init__ does. */
static PyTypeObject *request_type;
enum { S_METHOD, S_PATH, S_URL, S_HEADERS, S_BODY, S_KEEP_ALIVE, S_ERROR, S_T_BEGIN, S_T_PARSED, S_REQUEST_ID,
       S_RESPONSE_HEADERS, S_CTX, N_SLOTS };
static const char *slot_names[N_SLOTS] = {"method", "path", "url", "headers", "body", "keep_alive", "error",
                                          "t_begin", "t_parsed", "request_id", "response_headers", "ctx"};
static Py_ssize_t slot_offsets[N_SLOTS];
/* `take`: the queue length over which the connection stops reading (reader.py's PIPELINE_HIGH, given to
 * `configure`) */
static Py_ssize_t pipeline_high = 32;
/* attribute names `take` reads, interned once */
static PyObject *str_append, *str_completed, *str_conn, *str_pause_reading;

static PyObject *configure(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    PyObject *cls = nargs >= 1 ? args[0] : NULL;
    if (nargs < 1 || nargs > 2 || !PyType_Check(cls)) {
        PyErr_SetString(PyExc_TypeError, "configure(request_class, pipeline_high=32): a class");
        return NULL;
    }
    Py_ssize_t high = pipeline_high;
    if (nargs == 2 && ((high = PyLong_AsSsize_t(args[1])) == -1 && PyErr_Occurred()))
        return NULL;
    PyObject *slots = PyObject_GetAttrString(cls, "__slots__");
    if (slots == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Size(slots);
    Py_DECREF(slots);
    if (n != N_SLOTS || ((PyTypeObject *)cls)->tp_dictoffset != 0 || ((PyTypeObject *)cls)->tp_base != &PyBaseObject_Type) {
        PyErr_Format(PyExc_ValueError, "configure: %R is not the Request this module builds (its %d slots, no "
                     "__dict__, no base class); change shmserve/_native/http.c with it", cls, N_SLOTS);
        return NULL;
    }
    for (int i = 0; i < N_SLOTS; i++) {
        PyObject *d = PyObject_GetAttrString(cls, slot_names[i]);
        if (d == NULL)
            return NULL;
        int ok = Py_IS_TYPE(d, &PyMemberDescr_Type) && ((PyMemberDescrObject *)d)->d_member->type == T_OBJECT_EX;
        if (ok)
            slot_offsets[i] = ((PyMemberDescrObject *)d)->d_member->offset;
        Py_DECREF(d);
        if (!ok) {
            PyErr_Format(PyExc_ValueError, "configure: %R.%s is not a slot", cls, slot_names[i]);
            return NULL;
        }
    }
    Py_INCREF(cls);
    Py_XSETREF(request_type, (PyTypeObject *)cls);
    pipeline_high = high;
    Py_RETURN_NONE;
}

/* Request(method, url, headers, body, True, None, t_begin), built as its __init__ does. Steals url, headers,
 * body. New reference. */
static PyObject *build(PyObject *method, PyObject *url, PyObject *headers, PyObject *body, PyObject *t_begin) {
    PyObject *path = NULL, *t_parsed = NULL, *req = NULL;
    const char *u = PyBytes_AS_STRING(url);
    const char *q = memchr(u, '?', (size_t)PyBytes_GET_SIZE(url));
    if (q == NULL) {
        Py_INCREF(url);
        path = url;
    } else if ((path = PyBytes_FromStringAndSize(u, q - u)) == NULL) {
        goto fail;
    }
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* time.monotonic() */
    if ((t_parsed = PyFloat_FromDouble((double)ts.tv_sec + ts.tv_nsec * 1e-9)) == NULL)
        goto fail;
    if ((req = request_type->tp_alloc(request_type, 0)) == NULL)
        goto fail;
    /* owned: the reference held here moves into the object; the others are borrowed and taken */
    struct { PyObject *value; int owned; } values[N_SLOTS] = {
        [S_METHOD] = {method, 0}, [S_PATH] = {path, 1}, [S_URL] = {url, 1}, [S_HEADERS] = {headers, 1},
        [S_BODY] = {body, 1}, [S_KEEP_ALIVE] = {Py_True, 0}, [S_ERROR] = {Py_None, 0}, [S_T_BEGIN] = {t_begin, 0},
        [S_T_PARSED] = {t_parsed, 1}, [S_REQUEST_ID] = {empty_bytes, 0}, [S_RESPONSE_HEADERS] = {empty_bytes, 0},
        [S_CTX] = {Py_None, 0},
    };
    for (int i = 0; i < N_SLOTS; i++) {
        if (!values[i].owned)
            Py_INCREF(values[i].value);
        *(PyObject **)((char *)req + slot_offsets[i]) = values[i].value;
    }
    return req;
fail:
    Py_DECREF(url);
    Py_DECREF(headers);
    Py_DECREF(body);
    Py_XDECREF(path);
    Py_XDECREF(t_parsed);
    return NULL;
}

/* ASCII case-insensitive: does `p[0:n]` equal the lower-case `lower`? */
static int eq_lower(const char *p, Py_ssize_t n, const char *lower, Py_ssize_t m) {
    if (n != m)
        return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        char c = p[i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c + 32);
        if (c != lower[i])
            return 0;
    }
    return 1;
}

/* The lower-cased header name as bytes: a shared one when it is common (compared case-insensitively in
 * place, no lower-cased copy made for it). New reference. */
static PyObject *lower_name(const char *p, Py_ssize_t n) {
    for (size_t k = 0; k < N_COMMON; k++)
        if (common_lens[k] == n && eq_lower(p, n, PyBytes_AS_STRING(common_objs[k]), n)) {
            Py_INCREF(common_objs[k]);
            return common_objs[k];
        }
    PyObject *obj = PyBytes_FromStringAndSize(NULL, n);
    if (obj == NULL)
        return NULL;
    char *dst = PyBytes_AS_STRING(obj);
    for (Py_ssize_t i = 0; i < n; i++) {
        char c = p[i];
        dst[i] = (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
    }
    return obj;
}

/* One request at buf[pos:len]. Returns 1 and sets *out (a new Request) and *next; 0 when it is not the
 * plain case or not complete (nothing set); -1 on a Python error. */
static int parse_one(const char *buf, Py_ssize_t len, Py_ssize_t pos, PyObject *t_begin,
                     Py_ssize_t max_url, Py_ssize_t max_header, Py_ssize_t max_body, PyObject **out,
                     Py_ssize_t *next) {
    const char *p = buf + pos, *end = buf + len;
    /* method */
    const char *q = p;
    while (q < end && *q >= 'A' && *q <= 'Z')
        q++;
    if (q >= end || *q != ' ')
        return 0;
    Py_ssize_t mlen = q - p;
    PyObject *method = NULL;
    for (size_t k = 0; k < N_METHODS; k++)
        if (method_lens[k] == mlen && memcmp(method_names[k], p, (size_t)mlen) == 0) {
            method = method_objs[k];
            break;
        }
    if (method == NULL)
        return 0;
    /* target */
    const char *u = q + 1;
    if (u >= end || *u != '/')
        return 0;
    const char *v = u;
    while (v < end && (unsigned char)*v > 0x20 && (unsigned char)*v < 0x7f)
        v++;
    Py_ssize_t ulen = v - u;
    if (ulen > max_url)
        return 0;
    /* version */
    if (end - v < 11 || memcmp(v, " HTTP/1.1\r\n", 11) != 0)
        return 0;
    const char *h = v + 11;
    Py_ssize_t head_len = ulen; /* as the reader counts: target + (name + value + 4) per header */
    Py_ssize_t content_length = -1;
    /* header lines: found first, built once the head is known to be complete and plain */
    enum { MAX_FAST_HEADERS = 64 };
    const char *names[MAX_FAST_HEADERS], *values[MAX_FAST_HEADERS];
    Py_ssize_t name_lens[MAX_FAST_HEADERS], value_lens[MAX_FAST_HEADERS];
    int nh = 0;
    for (;;) {
        if (end - h < 2)
            return 0;
        if (h[0] == '\r') {
            if (h[1] != '\n')
                return 0;
            h += 2;
            break;
        }
        if (nh == MAX_FAST_HEADERS)
            return 0;
        const char *n0 = h;
        while (h < end && is_tchar[(unsigned char)*h])
            h++;
        if (h >= end || h == n0 || *h != ':')
            return 0;
        Py_ssize_t nlen = h - n0;
        h++;
        while (h < end && (*h == ' ' || *h == '\t'))
            h++;
        const char *v0 = h;
        while (h < end && is_vchar[(unsigned char)*h])
            h++;
        if (end - h < 2 || h[0] != '\r' || h[1] != '\n')
            return 0;
        Py_ssize_t vlen = h - v0;
        h += 2;
        head_len += nlen + vlen + 4;
        if (head_len > max_header || (h - (buf + pos)) > max_header)
            return 0;
        /* the headers whose meaning the reader or httptools acts on */
        switch (nlen) {
        case 6:
            if (eq_lower(n0, nlen, "expect", 6))
                return 0;
            break;
        case 7:
            if (eq_lower(n0, nlen, "upgrade", 7))
                return 0;
            break;
        case 10:
            if (eq_lower(n0, nlen, "connection", 10) && !eq_lower(v0, vlen, "keep-alive", 10))
                return 0;
            break;
        case 14:
            if (eq_lower(n0, nlen, "content-length", 14)) {
                if (content_length >= 0 || vlen == 0 || vlen > 18)
                    return 0;
                Py_ssize_t n = 0;
                for (Py_ssize_t i = 0; i < vlen; i++) {
                    if (v0[i] < '0' || v0[i] > '9')
                        return 0;
                    n = n * 10 + (v0[i] - '0');
                }
                content_length = n;
            }
            break;
        case 16: /* llhttp reads it as Connection */
            if (eq_lower(n0, nlen, "proxy-connection", 16) && !eq_lower(v0, vlen, "keep-alive", 10))
                return 0;
            break;
        case 17:
            if (eq_lower(n0, nlen, "transfer-encoding", 17))
                return 0;
            break;
        }
        names[nh] = n0;
        name_lens[nh] = nlen;
        values[nh] = v0;
        value_lens[nh] = vlen;
        nh++;
    }
    if (head_len > max_header || (h - (buf + pos)) > max_header)
        return 0;
    Py_ssize_t blen = content_length < 0 ? 0 : content_length;
    if (blen > max_body || end - h < blen)
        return 0;
    /* complete and plain: build it */
    PyObject *url = NULL, *headers = NULL, *body = NULL, *req;
    url = PyBytes_FromStringAndSize(u, ulen);
    headers = PyDict_New();
    if (url == NULL || headers == NULL)
        goto fail;
    for (int i = 0; i < nh; i++) {
        PyObject *key = lower_name(names[i], name_lens[i]);
        PyObject *val = value_lens[i] ? PyBytes_FromStringAndSize(values[i], value_lens[i]) : (Py_INCREF(empty_bytes), empty_bytes);
        int rc = (key == NULL || val == NULL) ? -1 : PyDict_SetItem(headers, key, val);
        Py_XDECREF(key);
        Py_XDECREF(val);
        if (rc < 0)
            goto fail;
    }
    if (blen) {
        body = PyBytes_FromStringAndSize(h, blen);
        if (body == NULL)
            goto fail;
    } else {
        Py_INCREF(empty_bytes);
        body = empty_bytes;
    }
    req = build(method, url, headers, body, t_begin);
    if (req == NULL)
        return -1;
    *out = req;
    *next = (h - buf) + blen;
    return 1;
fail:
    Py_XDECREF(url);
    Py_XDECREF(headers);
    Py_XDECREF(body);
    return -1;
}

/* Takes the plain complete requests at buf[pos:len], at most `max_count`, appending each to `dest` (a list,
 * or anything with an append method: the connection's deque). Returns where the first one not taken starts
 * (>= pos) and sets *taken; -1 on a Python error. */
static Py_ssize_t take_into(const char *buf, Py_ssize_t len, Py_ssize_t pos, PyObject *t_begin, Py_ssize_t max_url,
                            Py_ssize_t max_header, Py_ssize_t max_body, Py_ssize_t max_count, PyObject *dest,
                            Py_ssize_t *taken) {
    int is_list = PyList_CheckExact(dest);
    Py_ssize_t n = 0;
    while (n < max_count) {
        Py_ssize_t at = pos;
        while (at < len && (buf[at] == '\r' || buf[at] == '\n'))
            at++; /* empty lines between requests: llhttp skips them too */
        PyObject *req = NULL;
        Py_ssize_t next = 0;
        int rc = parse_one(buf, len, at, t_begin, max_url, max_header, max_body, &req, &next);
        if (rc < 0)
            return -1;
        if (rc == 0)
            break;
        if (is_list) {
            rc = PyList_Append(dest, req);
        } else {
            PyObject *r = PyObject_CallMethodOneArg(dest, str_append, req);
            rc = r == NULL ? -1 : 0;
            Py_XDECREF(r);
        }
        Py_DECREF(req);
        if (rc < 0)
            return -1;
        n++;
        pos = next;
    }
    *taken = n;
    return pos;
}

static PyObject *parse(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError,
                        "parse(data, start, request_class, t_begin, max_url, max_header, max_body, max_count)");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *t_begin = args[3];
    PyObject *list = NULL;
    if (request_type == NULL || args[2] != (PyObject *)request_type || !PyFloat_Check(t_begin)) {
        PyErr_SetString(PyExc_TypeError, "parse: request_class must be the configured one, t_begin a float");
        goto done;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[1]);
    Py_ssize_t max_url = PyLong_AsSsize_t(args[4]);
    Py_ssize_t max_header = PyLong_AsSsize_t(args[5]);
    Py_ssize_t max_body = PyLong_AsSsize_t(args[6]);
    Py_ssize_t max_count = PyLong_AsSsize_t(args[7]);
    if (PyErr_Occurred())
        goto done;
    if (start < 0 || start > view.len) {
        PyErr_SetString(PyExc_ValueError, "parse: start outside the data");
        goto done;
    }
    list = PyList_New(0);
    if (list == NULL)
        goto done;
    Py_ssize_t taken;
    Py_ssize_t pos = take_into((const char *)view.buf, view.len, start, t_begin, max_url, max_header, max_body,
                               max_count, list, &taken);
    if (pos < 0) {
        Py_CLEAR(list);
        goto done;
    }
    PyBuffer_Release(&view);
    return Py_BuildValue("(Nn)", list, pos);
done:
    PyBuffer_Release(&view);
    return NULL;
}

/* An attribute of `obj` as a Py_ssize_t (-1 with an exception set on failure). */
static Py_ssize_t ssize_attr(PyObject *obj, PyObject *name) {
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL)
        return -1;
    Py_ssize_t n = PyLong_AsSsize_t(v);
    Py_DECREF(v);
    return n;
}

/* take(data, t_begin, queue, limits, reader) -> end: what RequestReader.feed does with `parse` at the start
 * of a read, in one call: the plain requests at data[0:] are appended to `queue` (at most as many as bring
 * it to pipeline_high + 1, and one at least), within `limits` (max_url_bytes, max_header_bytes,
 * max_body_bytes); reader.completed counts them; reader.conn.pause_reading() is called once the queue holds
 * more than pipeline_high. `end`: where the first request not taken starts. The caller passes what it
 * reads cheaply (an attribute load in Python costs a fraction of PyObject_GetAttr here). */
static PyObject *take(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 5 || !PyFloat_Check(args[1]) || !PyTuple_Check(args[3]) || PyTuple_GET_SIZE(args[3]) != 3) {
        PyErr_SetString(PyExc_TypeError, "take(data, t_begin, queue, limits, reader): t_begin a float, limits "
                                         "(max_url_bytes, max_header_bytes, max_body_bytes)");
        return NULL;
    }
    if (request_type == NULL) {
        PyErr_SetString(PyExc_TypeError, "take: configure(request_class) first");
        return NULL;
    }
    PyObject *queue = args[2], *limits = args[3], *reader = args[4], *result = NULL;
    Py_ssize_t max_url = PyLong_AsSsize_t(PyTuple_GET_ITEM(limits, 0));
    Py_ssize_t max_header = PyLong_AsSsize_t(PyTuple_GET_ITEM(limits, 1));
    Py_ssize_t max_body = PyLong_AsSsize_t(PyTuple_GET_ITEM(limits, 2));
    Py_ssize_t queued = PyObject_Size(queue);
    if (PyErr_Occurred())
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    Py_ssize_t max_count = pipeline_high + 1 - queued;
    Py_ssize_t taken;
    Py_ssize_t pos = take_into((const char *)view.buf, view.len, 0, args[1], max_url, max_header, max_body,
                               max_count < 1 ? 1 : max_count, queue, &taken);
    if (pos < 0)
        goto done;
    if (taken) {
        Py_ssize_t completed = ssize_attr(reader, str_completed);
        if (completed == -1 && PyErr_Occurred())
            goto done;
        PyObject *c = PyLong_FromSsize_t(completed + taken);
        int rc = c == NULL ? -1 : PyObject_SetAttr(reader, str_completed, c);
        Py_XDECREF(c);
        if (rc < 0)
            goto done;
        if (queued + taken > pipeline_high) {
            PyObject *conn = PyObject_GetAttr(reader, str_conn);
            PyObject *r = conn == NULL ? NULL : PyObject_CallMethodNoArgs(conn, str_pause_reading);
            Py_XDECREF(conn);
            if (r == NULL)
                goto done;
            Py_DECREF(r);
        }
    }
    result = PyLong_FromSsize_t(pos);
done:
    PyBuffer_Release(&view);
    return result;
}

/* response(head, extra, response_headers, end, body) -> bytes: the whole response to write, as
 * b"".join((head, b"%d\r\n" % len(body), extra, response_headers, end, body)) (HttpProtocol.reply): one
 * allocation, the length formatted here, instead of a tuple, a formatted bytes and the join. */
static PyObject *response(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "response(head, extra, response_headers, end, body)");
        return NULL;
    }
    /* bytes (what the application passes) are read in place; anything else through the buffer protocol */
    Py_buffer views[5];
    const char *bufs[5];
    Py_ssize_t lens[5];
    int held[5] = {0}, got = 0;
    PyObject *result = NULL;
    for (; got < 5; got++) {
        if (PyBytes_CheckExact(args[got])) {
            bufs[got] = PyBytes_AS_STRING(args[got]);
            lens[got] = PyBytes_GET_SIZE(args[got]);
            continue;
        }
        if (PyObject_GetBuffer(args[got], &views[got], PyBUF_SIMPLE) < 0)
            goto done;
        held[got] = 1;
        bufs[got] = (const char *)views[got].buf;
        lens[got] = views[got].len;
    }
    char digits[24]; /* the body's length in decimal, then CRLF, written backwards from the end */
    char *d = digits + sizeof(digits);
    *--d = '\n';
    *--d = '\r';
    size_t n = (size_t)lens[4];
    do {
        *--d = (char)('0' + n % 10);
        n /= 10;
    } while (n);
    Py_ssize_t nlen = digits + sizeof(digits) - d;
    Py_ssize_t total = nlen;
    for (int i = 0; i < 5; i++)
        total += lens[i];
    result = PyBytes_FromStringAndSize(NULL, total);
    if (result == NULL)
        goto done;
    char *out = PyBytes_AS_STRING(result);
    memcpy(out, bufs[0], (size_t)lens[0]);
    out += lens[0];
    memcpy(out, d, (size_t)nlen);
    out += nlen;
    for (int i = 1; i < 5; i++) {
        memcpy(out, bufs[i], (size_t)lens[i]);
        out += lens[i];
    }
done:
    while (got > 0)
        if (held[--got])
            PyBuffer_Release(&views[got]);
    return result;
}

static PyMethodDef methods[] = {
    {"response", (PyCFunction)(void (*)(void))response, METH_FASTCALL,
     "response(head, extra, response_headers, end, body) -> bytes: head, the body's length and CRLF, extra, "
     "response_headers, end, body."},
    {"configure", (PyCFunction)(void (*)(void))configure, METH_FASTCALL,
     "configure(request_class, pipeline_high=32): the Request class whose objects parse builds (its slots are "
     "read), and the queue length over which `take` pauses reading; once."},
    {"take", (PyCFunction)(void (*)(void))take, METH_FASTCALL,
     "take(data, t_begin, queue, limits, reader) -> end: the plain complete requests at the start of data "
     "appended to queue (RequestReader.feed's C path); end: where the first other one starts."},
    {"parse", (PyCFunction)(void (*)(void))parse, METH_FASTCALL,
     "parse(data, start, request_class, t_begin, max_url, max_header, max_body, max_count) -> (requests, end): "
     "the plain complete requests at data[start:], built; end: where the first other one starts."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_http", "The common HTTP/1.1 request parsed in C.", -1,
                                    methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__http(void) {
    const char *tchars = "!#$%&'*+-.^_`|~";
    for (int c = 0; c < 256; c++) {
        is_tchar[c] = (unsigned char)((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                                      (c != 0 && strchr(tchars, c) != NULL));
        is_vchar[c] = (unsigned char)(c == '\t' || c == ' ' || (c >= 0x21 && c <= 0x7e) || c >= 0x80);
    }
    empty_bytes = PyBytes_FromStringAndSize(NULL, 0);
    if (empty_bytes == NULL)
        return NULL;
    struct { PyObject **slot; const char *name; } names[] = {
        {&str_append, "append"}, {&str_completed, "completed"},
        {&str_conn, "conn"}, {&str_pause_reading, "pause_reading"}, 
    };
    for (size_t k = 0; k < sizeof(names) / sizeof(names[0]); k++)
        if ((*names[k].slot = PyUnicode_InternFromString(names[k].name)) == NULL)
            return NULL;
    for (size_t k = 0; k < N_METHODS; k++) {
        if ((method_objs[k] = PyBytes_FromString(method_names[k])) == NULL)
            return NULL;
        method_lens[k] = (Py_ssize_t)strlen(method_names[k]);
    }
    for (size_t k = 0; k < N_COMMON; k++) {
        if ((common_objs[k] = PyBytes_FromString(common_names[k])) == NULL)
            return NULL;
        common_lens[k] = (Py_ssize_t)strlen(common_names[k]);
    }
    return PyModule_Create(&module);
}
