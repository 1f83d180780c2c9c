/* A JSON array of numbers parsed in one pass straight into a typed buffer.
 *
 * The C twin of the small-body path of shmserve/jsonarray.py (orjson, then
 * numpy). parse(body, code) reads `body` (any contiguous buffer) as a nested,
 * rectangular JSON array of numbers and returns (bytearray, shape, code):
 * the C-order values as float64 ('d'), float32 ('f'), or, with code 'n', the
 * dtype numpy infers from the parsed list: bool ('?') when all are true/false,
 * int64 ('q') when all are integers, else float64 ('d').
 *
 * It returns None for anything it does not take: not JSON, a string, an
 * object, null, a scalar, a ragged array, deeper than MAX_DEPTH, an integer
 * outside int64, a number out of range for the dtype, booleans mixed with
 * numbers under 'n', or (for float32 above 2 dimensions) an integer of more
 * than 24 bits. The caller then runs the Python path, which gives the result
 * or the error message; so what this accepts is a subset of what that path
 * accepts, with the same values, and error messages exist in one place only.
 *
 * The GIL is held: a call is given at most one piece of the stepwise decoder
 * (about 128 KiB, well under a millisecond), so releasing it would buy no
 * event-loop time and cost a switch.
 */
#define PY_SSIZE_T_CLEAN
/* Python.h first: its pyconfig.h sets _GNU_SOURCE, which declares strtod_l and newlocale */
#include <Python.h>
#include <float.h>
#include <locale.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "jsonarray_pow5.h"

#define MAX_DEPTH 32
/* digits copied to the stack for strtod_l; longer numbers go through the heap */
#define TOKEN_STACK 128

static locale_t c_locale;

static const double POW10[23] = {
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
    1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

typedef struct {
    const char *p, *end;
} Cursor;

static inline void skip_space(Cursor *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
        c->p++;
}

static inline int is_digit(char ch) { return (unsigned char)(ch - '0') < 10; }

/* A JSON number, read in one pass: its text is '-'? ('0' | [1-9][0-9]*) ('.' [0-9]+)? ([eE] [+-]? [0-9]+)?
 * When it has at most 19 significant digits (exact), its value is w * 10^k; else only its text counts. */
typedef struct {
    uint64_t w;
    int k;
    int neg;
    int exact;
    int is_int; /* no fraction, no exponent */
} Number;

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
/* Eight ASCII digits at once (the SWAR steps of fast_float and simdjson): most of a typical body's
 * bytes are fraction digits, and a byte at a time cost ~11 instructions each. */
static inline uint64_t load8(const char *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static inline int eight_digits(uint64_t v) {
    return !(((v + 0x4646464646464646u) | (v - 0x3030303030303030u)) & 0x8080808080808080u);
}

static inline uint64_t eight_value(uint64_t v) {
    v -= 0x3030303030303030u;
    v = v * 10 + (v >> 8);
    return (((v & 0x000000FF000000FFu) * 0x000F424000000064u) +
            (((v >> 16) & 0x000000FF000000FFu) * 0x0000271000000001u)) >> 32;
}
#define DIGITS8(p, end, w)                                            \
    while ((end) - (p) >= 8 && eight_digits(load8(p))) {              \
        (w) = (w) * 100000000u + eight_value(load8(p));               \
        (p) += 8;                                                     \
    }
#else
#define DIGITS8(p, end, w)
#endif

/* Returns the end of the number at p, or NULL when the text there is no JSON number. The digit loops
 * only accumulate (the typical body is mostly digits); whether w kept every significant digit is
 * settled after them, from the counts. */
static const char *scan_number(const char *p, const char *end, Number *n) {
    uint64_t w = 0;
    const char *first, *dot = NULL;
    Py_ssize_t count, frac = 0;
    n->neg = 0;
    if (p < end && *p == '-') {
        n->neg = 1;
        p++;
    }
    first = p;
    if (p >= end || !is_digit(*p))
        return NULL;
    if (*p == '0') {
        p++;
    } else {
        DIGITS8(p, end, w)
        for (; p < end && is_digit(*p); p++)
            w = w * 10 + (uint64_t)(*p - '0'); /* wraps past 19 digits: then not `exact`, below */
    }
    count = p - first;
    n->is_int = 1;
    if (p < end && *p == '.') {
        n->is_int = 0;
        dot = ++p;
        if (p >= end || !is_digit(*p))
            return NULL;
        DIGITS8(p, end, w)
        for (; p < end && is_digit(*p); p++)
            w = w * 10 + (uint64_t)(*p - '0');
        frac = p - dot;
        count += frac;
    }
    n->exact = 1;
    if (count > 19) { /* more than 19 digits: exact only if leading zeros (0.000ddd) make up the rest */
        Py_ssize_t zeros = 0;
        if (*first == '0' && dot != NULL)
            for (zeros = 1; zeros - 1 < frac && dot[zeros - 1] == '0'; zeros++)
                ;
        n->exact = count - zeros <= 19;
    }
    int k = n->exact ? (int)-frac : 0; /* (frac <= 19 + zeros: bounded by the body, checked below) */
    if (n->exact && frac > 100000)
        n->exact = 0, k = 0;
    if (p < end && (*p == 'e' || *p == 'E')) {
        int eneg = 0, x = 0;
        n->is_int = 0;
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            eneg = *p++ == '-';
        if (p >= end || !is_digit(*p))
            return NULL;
        for (; p < end && is_digit(*p); p++)
            if (x < 100000) /* beyond any double either way; strtod_l reads the text */
                x = x * 10 + (*p - '0');
        k += eneg ? -x : x;
    }
    n->w = w;
    n->k = k;
    return p;
}

#ifdef __SIZEOF_INT128__
__extension__ typedef unsigned __int128 u128;

static int eisel_lemire(uint64_t w, int q, int neg, double *out) {
    if (w == 0 || q < -342 || q > 308)
        return 0;
    int lz = __builtin_clzll(w);
    w <<= lz;
    const uint64_t *t = POW5_128[q + 342];
    u128 first = (u128)w * t[0];
    uint64_t hi = (uint64_t)(first >> 64), lo = (uint64_t)first;
    if ((hi & 0x1FF) == 0x1FF) { /* the 9 bits below the 55 kept may carry: add the next 64 bits */
        uint64_t second_hi = (uint64_t)(((u128)w * t[1]) >> 64);
        lo += second_hi;
        if (second_hi > lo)
            hi++;
        if (lo == UINT64_MAX)
            return 0;
    }
    int upper = (int)(hi >> 63);
    uint64_t m = hi >> (upper + 9);
    int p2 = (((152170 + 65536) * q) >> 16) + 63 + upper - lz + 1023;
    if (p2 <= 0)
        return 0;
    if (lo <= 1 && (m & 3) == 1)
        return 0; /* maybe exactly halfway between two doubles */
    m += m & 1;
    m >>= 1;
    if (m >= ((uint64_t)1 << 53)) {
        m = (uint64_t)1 << 52;
        p2++;
    }
    m &= ~((uint64_t)1 << 52);
    if (p2 >= 0x7FF)
        return 0;
    uint64_t bits = m | ((uint64_t)p2 << 52) | ((uint64_t)neg << 63);
    memcpy(out, &bits, sizeof bits);
    return 1;
}
#else
/* no 128-bit integers (a 32-bit build): strtod_l decides */
static int eisel_lemire(uint64_t w, int q, int neg, double *out) {
    (void)w, (void)q, (void)neg, (void)out;
    return 0;
}
#endif

/* The double nearest the JSON number in [s, e) (read by scan_number), correctly rounded, as
 * Python's float() and orjson give it. Digit arithmetic is where decoders get the last bit wrong, so
 * only published, proven steps are done here, each of which hands over what it cannot decide:
 * Clinger's fast path (w <= 2^53 and 10^|k| <= 10^22 are exact doubles, and one IEEE multiply or
 * divide rounds once, correctly), then Eisel-Lemire; the rest goes to strtod_l in the C locale
 * (glibc's strtod is correctly rounded; the C locale keeps '.' the decimal point whatever setlocale()
 * the process ran). strtod_l alone measured ~230 ns a number on the typical body, twice orjson's
 * whole parse, because most of its numbers have 16-17 digits, past the fast path. */
static double to_double(const Number *num, const char *s, const char *e, int *ok) {
    uint64_t w = num->w;
    int k = num->k, neg = num->neg, exact = num->exact;
    *ok = 1;
#if FLT_EVAL_METHOD == 0
    if (exact && w <= ((uint64_t)1 << 53) && k >= -22 && k <= 22) {
        double d = (double)w;
        d = k < 0 ? d / POW10[-k] : d * POW10[k];
        return neg ? -d : d;
    }
#endif
    double fast;
    if (exact && eisel_lemire(w, k, neg, &fast))
        return fast;
    char stack[TOKEN_STACK];
    size_t n = (size_t)(e - s);
    char *buf = n < TOKEN_STACK ? stack : PyMem_Malloc(n + 1);
    if (buf == NULL) {
        *ok = 0;
        return 0.0;
    }
    memcpy(buf, s, n);
    buf[n] = '\0';
    double d = strtod_l(buf, NULL, c_locale);
    if (buf != stack)
        PyMem_Free(buf);
    return d;
}

typedef struct {
    char *out;            /* the bytearray's storage */
    Py_ssize_t count;     /* values written */
    Py_ssize_t capacity;  /* values that fit */
    char code;            /* 'd', 'f', or 'n' (infer: becomes '?', 'q' or 'd' at the first value) */
    char have;            /* under 'n': the kind written so far, 0 before the first value */
    int big_int;          /* an integer above 2^24 in magnitude was read */
} Out;

enum { TAKE = 0, REFUSE = 1, NOMEM = 2 };

/* Write one value (a number token or true/false) at the cursor; TAKE, REFUSE or NOMEM. */
static int put_value(Cursor *c, Out *o) {
    const char *s = c->p;
    int is_bool = 0, bval = 0, is_int = 0, ok = 1;
    int64_t ival = 0;
    double d = 0.0;
    if (c->end - s >= 4 && memcmp(s, "true", 4) == 0) {
        is_bool = 1, bval = 1, c->p = s + 4;
    } else if (c->end - s >= 5 && memcmp(s, "false", 5) == 0) {
        is_bool = 1, c->p = s + 5;
    } else {
        Number n;
        const char *e = scan_number(s, c->end, &n);
        if (e == NULL)
            return REFUSE;
        c->p = e;
        is_int = n.is_int;
        if (is_int) { /* an integer outside int64 is left to the Python path (orjson makes a float of some) */
            if (!n.exact || n.w > (uint64_t)INT64_MAX + n.neg)
                return REFUSE;
            ival = n.neg ? (int64_t)(0 - n.w) : (int64_t)n.w;
        } else {
            d = to_double(&n, s, e, &ok);
            if (!ok)
                return NOMEM;
            if (!isfinite(d))
                return REFUSE;
        }
    }
    if (o->count >= o->capacity)
        return REFUSE; /* cannot happen (capacity bounds the values a text of this length holds) */
    Py_ssize_t i = o->count++;
    if (o->code == 'n') {
        char kind = is_bool ? '?' : is_int ? 'q' : 'd';
        if (o->have == 0)
            o->have = kind;
        if ((kind == '?') != (o->have == '?'))
            return REFUSE; /* booleans mixed with numbers: numpy's rules, left to the Python path */
        if (kind == '?') {
            ((unsigned char *)o->out)[i] = (unsigned char)bval;
            return TAKE;
        }
        if (kind == 'd' && o->have == 'q') { /* the first float: the integers so far become doubles */
            int64_t *q = (int64_t *)o->out;
            for (Py_ssize_t j = 0; j < i; j++)
                ((double *)q)[j] = (double)q[j];
            o->have = 'd';
        }
        if (o->have == 'q')
            ((int64_t *)o->out)[i] = ival;
        else
            ((double *)o->out)[i] = is_int ? (double)ival : d;
        return TAKE;
    }
    /* float64 / float32: every value is first the nearest double (as struct.pack('d') makes it,
     * exact for integers as int.__float__ rounds), then the dtype */
    if (is_bool)
        d = bval;
    else if (is_int) {
        d = (double)ival;
        if (ival > (1 << 24) || ival < -(1 << 24))
            o->big_int = 1;
    }
    if (o->code == 'd') {
        ((double *)o->out)[i] = d;
    } else {
        float f = (float)d;
        if (isinf(f))
            return REFUSE;
        ((float *)o->out)[i] = f;
    }
    return TAKE;
}

/* The whole text as a rectangular array; fills shape[0..*ndim). */
static int parse_array(Cursor *c, Out *o, Py_ssize_t *shape, int *ndim) {
    Py_ssize_t counts[MAX_DEPTH];
    int depth = 0; /* arrays open */
    int leaf = -1; /* the depth at which values sit (= ndim), -1 until known */
    int known[MAX_DEPTH] = {0};
    skip_space(c);
    if (c->p >= c->end || *c->p != '[')
        return REFUSE;
    for (;;) {
        /* at an element's start (or the close of an empty array) inside depth `depth` arrays */
        if (c->p < c->end && *c->p == '[') {
            if (depth >= MAX_DEPTH || (leaf >= 0 && depth >= leaf))
                return REFUSE;
            counts[depth++] = 0;
            c->p++;
            skip_space(c);
            if (c->p < c->end && *c->p == ']') { /* empty array: values (none) sit one level down */
                if (leaf < 0)
                    leaf = depth;
                if (depth != leaf)
                    return REFUSE;
                goto close;
            }
            continue;
        }
        if (depth == 0)
            return REFUSE;
        if (leaf < 0)
            leaf = depth;
        if (depth != leaf)
            return REFUSE;
        {
            int r = put_value(c, o);
            if (r != TAKE)
                return r;
        }
        counts[depth - 1]++;
        for (;;) { /* after an element: ',' for the next, or ']' closing arrays */
            skip_space(c);
            if (c->p >= c->end)
                return REFUSE;
            if (*c->p == ',') {
                c->p++;
                skip_space(c);
                break;
            }
            if (*c->p != ']')
                return REFUSE;
        close:
            c->p++;
            depth--;
            if (known[depth] ? shape[depth] != counts[depth] : 0)
                return REFUSE; /* ragged */
            shape[depth] = counts[depth];
            known[depth] = 1;
            if (depth == 0) {
                skip_space(c);
                if (c->p != c->end)
                    return REFUSE;
                *ndim = leaf;
                return TAKE;
            }
            counts[depth - 1]++;
        }
    }
}

static PyObject *parse(PyObject *self, PyObject *args) {
    Py_buffer view;
    int code;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*C:parse", &view, &code))
        return NULL;
    if (code != 'd' && code != 'f' && code != 'n') {
        PyBuffer_Release(&view);
        return PyErr_Format(PyExc_ValueError, "parse: code must be 'd', 'f' or 'n', not %c", code);
    }
    /* every value takes a byte and all but the last a comma: at most (n + 1) / 2 of them */
    Py_ssize_t capacity = (view.len + 1) / 2;
    Py_ssize_t itemsize = code == 'f' ? 4 : 8;
    PyObject *buf = PyByteArray_FromStringAndSize(NULL, capacity * itemsize);
    if (buf == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    Out o = {PyByteArray_AS_STRING(buf), 0, capacity, (char)code, 0, 0};
    Cursor c = {(const char *)view.buf, (const char *)view.buf + view.len};
    Py_ssize_t shape[MAX_DEPTH];
    int ndim = 0;
    int r = parse_array(&c, &o, shape, &ndim);
    PyBuffer_Release(&view);
    if (r == TAKE && code == 'f' && ndim > 2 && o.big_int)
        r = REFUSE; /* numpy converts such integers to float32 its own way above 2 dimensions */
    if (r != TAKE) {
        Py_DECREF(buf);
        if (r == NOMEM)
            return PyErr_NoMemory();
        Py_RETURN_NONE;
    }
    char out_code = code == 'n' ? (o.have ? o.have : 'd') : (char)code;
    Py_ssize_t out_size = out_code == '?' ? 1 : out_code == 'f' ? 4 : 8;
    if (PyByteArray_Resize(buf, o.count * out_size) < 0) {
        Py_DECREF(buf);
        return NULL;
    }
    PyObject *dims = PyTuple_New(ndim);
    if (dims == NULL) {
        Py_DECREF(buf);
        return NULL;
    }
    for (int i = 0; i < ndim; i++) {
        PyObject *n = PyLong_FromSsize_t(shape[i]);
        if (n == NULL) {
            Py_DECREF(dims);
            Py_DECREF(buf);
            return NULL;
        }
        PyTuple_SET_ITEM(dims, i, n);
    }
    return Py_BuildValue("(NNC)", buf, dims, out_code);
}

static PyMethodDef methods[] = {
    {"parse", parse, METH_VARARGS,
     "parse(body, code) -> (bytearray, shape, code) or None: a JSON array of numbers as float64 ('d'), "
     "float32 ('f') or the inferred dtype ('n'); None where the Python path must decide."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_jsonarray", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__jsonarray(void) {
    if (c_locale == (locale_t)0) {
        c_locale = newlocale(LC_ALL_MASK, "C", (locale_t)0);
        if (c_locale == (locale_t)0)
            return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "MAX_DEPTH", MAX_DEPTH) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
