/* shmserve._native._task: one HTTP request's coroutine, run without an asyncio.Task.
 *
 * Why: the API worker makes one asyncio.Task per API request, and on Python 3.11 making one costs ~4,000
 * instructions and freeing it ~2,000 (its registration in asyncio's WeakSet of all tasks, a Python
 * WeakSet.add on the way in and a weakref callback on the way out; the call_soon of its first step; its
 * name and keyword arguments), about 4% of the worker's whole cost for a raw-body request.
 *
 * start_task(coro, loop, conn) makes one, sets conn.task to it and runs the coroutine's first step at once
 * (what Python 3.12's eager task factory does), inside a copy of the current contextvars context, as a
 * Task would. Each later step runs when the future the coroutine waits on is done: the task is the
 * future's done callback (called with the future, or with nothing after a bare yield), and the callback
 * runs in the task's context. The coroutine yields futures (objects with `_asyncio_future_blocking`) as
 * it does under a Task, and the same mistakes (a future of another loop, a bare yield of a non-future)
 * are thrown into it as the same RuntimeErrors.
 *
 * While a step runs the task is asyncio.current_task() (asyncio's own _current_tasks dict; a task already
 * current is put back after the step, as 3.12's eager tasks do), and it offers what the standard library
 * asks of the current task: cancel(msg=None), cancelling(), uncancel() (asyncio.timeout, TaskGroup),
 * done(), cancelled(), get_coro(), get_loop(), get_name(); and weak references. cancel() follows
 * Task.cancel: the awaited future is cancelled, or the next step throws CancelledError. A coroutine that
 * ends with CancelledError leaves the task cancelled(); any other exception goes to the loop's exception
 * handler at once (a Task would report it when collected); KeyboardInterrupt and SystemExit propagate.
 * It is not a future: nothing awaits it (the application answers from inside the coroutine).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>

enum { T_PENDING, T_CANCELLED, T_FINISHED };

typedef struct {
    PyObject_HEAD
    PyObject *coro;        /* NULL once done */
    PyObject *loop;
    PyObject *context;
    PyObject *waiter;      /* the future the coroutine waits on, or NULL */
    PyObject *cancel_msg;  /* given to cancel() while no future could take it, or NULL */
    PyObject *pending_exc; /* thrown into the coroutine at its next step (a bad yield), or NULL */
    PyObject *weakreflist;
    int state;
    int must_cancel;
    int num_cancels_requested;
} RequestTask;

static PyTypeObject RequestTask_Type;
/* asyncio's loop -> running task dict (asyncio.current_task reads it) and CancelledError */
static PyObject *current_tasks, *cancelled_error;
static PyObject *str_blocking, *str_add_done_callback, *str_cancel, *str_get_loop, *str_call_soon, *str_task,
    *str_call_exception_handler, *str_throw, *str_message, *str_exception, *str_name, *kw_context;

static int rtask_traverse(RequestTask *t, visitproc visit, void *arg) {
    Py_VISIT(t->coro);
    Py_VISIT(t->loop);
    Py_VISIT(t->context);
    Py_VISIT(t->waiter);
    Py_VISIT(t->cancel_msg);
    Py_VISIT(t->pending_exc);
    return 0;
}

static int rtask_clear(RequestTask *t) {
    Py_CLEAR(t->coro);
    Py_CLEAR(t->loop);
    Py_CLEAR(t->context);
    Py_CLEAR(t->waiter);
    Py_CLEAR(t->cancel_msg);
    Py_CLEAR(t->pending_exc);
    return 0;
}

static void rtask_dealloc(RequestTask *t) {
    PyObject_GC_UnTrack(t);
    if (t->weakreflist != NULL)
        PyObject_ClearWeakRefs((PyObject *)t);
    rtask_clear(t);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

/* loop.call_soon(task, context=task's context): the next step, from the loop (a bare yield, a bad yield) */
static int rtask_schedule(RequestTask *t) {
    PyObject *args[] = {t->loop, (PyObject *)t, t->context};
    PyObject *r = PyObject_VectorcallMethod(str_call_soon, args, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, kw_context);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

/* The coroutine raised `exc` (not CancelledError): tell the loop's exception handler, as a Task's
 * "exception was never retrieved" would. Consumes nothing; clears any error of its own. */
static void rtask_report(RequestTask *t, PyObject *exc) {
    PyObject *ctx = PyDict_New();
    PyObject *msg = PyUnicode_FromString("Unhandled exception in a request's coroutine (shmserve RequestTask)");
    if (ctx != NULL && msg != NULL && PyDict_SetItem(ctx, str_message, msg) == 0 &&
        PyDict_SetItem(ctx, str_exception, exc) == 0 && PyDict_SetItem(ctx, str_task, (PyObject *)t) == 0) {
        PyObject *r = PyObject_CallMethodOneArg(t->loop, str_call_exception_handler, ctx);
        Py_XDECREF(r);
    }
    Py_XDECREF(ctx);
    Py_XDECREF(msg);
    if (PyErr_Occurred())
        PyErr_WriteUnraisable((PyObject *)t);
}

static void rtask_finish(RequestTask *t, int state) {
    t->state = state;
    Py_CLEAR(t->coro);
    Py_CLEAR(t->waiter);
    Py_CLEAR(t->pending_exc);
}

/* obj.name into *out (NULL when it has none, no error); -1 on another error */
static int optional_attr(PyObject *obj, PyObject *name, PyObject **out) {
#if PY_VERSION_HEX >= 0x030D0000
    return PyObject_GetOptionalAttr(obj, name, out);
#else
    return _PyObject_LookupAttr(obj, name, out);
#endif
}

/* The coroutine yielded `result` (a new reference, consumed): wait on it as Task.__step does. */
static void rtask_wait(RequestTask *t, PyObject *result) {
    PyObject *blocking = NULL, *bad = NULL;
    if (optional_attr(result, str_blocking, &blocking) < 0)
        goto failed;
    if (blocking == Py_True) {
        PyObject *loop = PyObject_CallMethodNoArgs(result, str_get_loop);
        if (loop == NULL)
            goto failed;
        Py_DECREF(loop);
        if (loop != t->loop) {
            bad = PyUnicode_FromFormat("Task %R got Future %R attached to a different loop", t, result);
        } else if (result == (PyObject *)t) {
            bad = PyUnicode_FromFormat("Task cannot await on itself: %R", t);
        } else {
            if (PyObject_SetAttr(result, str_blocking, Py_False) < 0)
                goto failed;
            PyObject *args[] = {result, (PyObject *)t, t->context};
            PyObject *r = PyObject_VectorcallMethod(str_add_done_callback, args, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                                    kw_context);
            if (r == NULL)
                goto failed;
            Py_DECREF(r);
            Py_DECREF(blocking);
            t->waiter = result; /* the reference moves here */
            if (t->must_cancel) {
                PyObject *c = t->cancel_msg == NULL ? PyObject_CallMethodNoArgs(result, str_cancel)
                                                    : PyObject_CallMethodOneArg(result, str_cancel, t->cancel_msg);
                if (c == NULL) {
                    PyErr_WriteUnraisable((PyObject *)t);
                } else {
                    if (PyObject_IsTrue(c) == 1)
                        t->must_cancel = 0;
                    Py_DECREF(c);
                }
            }
            return;
        }
    } else if (blocking != NULL) {
        bad = PyUnicode_FromFormat("yield was used instead of yield from in task %R with %R", t, result);
    } else if (result != Py_None) {
        bad = PyUnicode_FromFormat("Task got bad yield: %R", result);
    }
    Py_XDECREF(blocking);
    Py_DECREF(result);
    if (bad != NULL) { /* thrown into the coroutine at its next step */
        t->pending_exc = PyObject_CallOneArg(PyExc_RuntimeError, bad);
        Py_DECREF(bad);
        if (t->pending_exc == NULL)
            goto failed_nothing_held;
    } else if (PyErr_Occurred()) {
        goto failed_nothing_held;
    }
    if (rtask_schedule(t) == 0)
        return;
    goto failed_nothing_held;
failed:
    Py_XDECREF(blocking);
    Py_DECREF(result);
failed_nothing_held: {
        /* the machinery itself failed (no memory, a broken future): the request's coroutine cannot go on */
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        PyObject *coro = t->coro;
        Py_XINCREF(coro);
        rtask_finish(t, T_FINISHED);
        if (value != NULL)
            rtask_report(t, value);
        if (coro != NULL) {
            PyObject *r = PyObject_CallMethod(coro, "close", NULL);
            if (r == NULL)
                PyErr_WriteUnraisable(coro);
            Py_XDECREF(r);
            Py_DECREF(coro);
        }
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
    }
}

/* One step of the coroutine. NULL only for KeyboardInterrupt and SystemExit, which propagate. */
static PyObject *rtask_step(RequestTask *t) {
    if (t->state != T_PENDING || t->coro == NULL)
        Py_RETURN_NONE; /* a late wake-up */
    PyObject *exc = t->pending_exc;
    t->pending_exc = NULL;
    if (t->must_cancel) {
        t->must_cancel = 0;
        Py_XDECREF(exc);
        exc = t->cancel_msg == NULL ? PyObject_CallNoArgs(cancelled_error)
                                    : PyObject_CallOneArg(cancelled_error, t->cancel_msg);
        if (exc == NULL)
            return NULL;
    }
    Py_CLEAR(t->waiter);
    Py_INCREF(t); /* the step may drop every other reference (conn.task) */
    PyObject *coro = t->coro;
    Py_INCREF(coro);
    /* asyncio.current_task() is this task while it runs; a task that was current is put back after */
    PyObject *prev = PyDict_GetItemWithError(current_tasks, t->loop);
    Py_XINCREF(prev);
    if (PyErr_Occurred() || PyDict_SetItem(current_tasks, t->loop, (PyObject *)t) < 0) {
        Py_XDECREF(prev);
        Py_XDECREF(exc);
        Py_DECREF(coro);
        Py_DECREF(t);
        return NULL;
    }
    PyObject *result = NULL;
    PySendResult sent;
    if (exc == NULL) {
        sent = PyIter_Send(coro, Py_None, &result);
    } else {
        result = PyObject_CallMethodOneArg(coro, str_throw, exc);
        Py_DECREF(exc);
        if (result != NULL) {
            sent = PYGEN_NEXT;
        } else if (PyErr_ExceptionMatches(PyExc_StopIteration)) {
            PyErr_Clear();
            sent = PYGEN_RETURN;
        } else {
            sent = PYGEN_ERROR;
        }
    }
    Py_DECREF(coro);
    PyObject *type = NULL, *value = NULL, *tb = NULL;
    if (sent == PYGEN_ERROR) {
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
    }
    int rc = prev != NULL ? PyDict_SetItem(current_tasks, t->loop, prev) : PyDict_DelItem(current_tasks, t->loop);
    Py_XDECREF(prev);
    if (rc < 0)
        PyErr_WriteUnraisable((PyObject *)t);
    PyObject *ret = Py_None;
    Py_INCREF(ret);
    switch (sent) {
    case PYGEN_RETURN:
        Py_XDECREF(result);
        rtask_finish(t, t->must_cancel ? T_CANCELLED : T_FINISHED); /* cancelled meanwhile: as Task.__step */
        break;
    case PYGEN_NEXT:
        rtask_wait(t, result);
        break;
    case PYGEN_ERROR:
        if (PyErr_GivenExceptionMatches(type, cancelled_error)) {
            rtask_finish(t, T_CANCELLED);
        } else if (PyErr_GivenExceptionMatches(type, PyExc_KeyboardInterrupt) ||
                   PyErr_GivenExceptionMatches(type, PyExc_SystemExit)) {
            rtask_finish(t, T_FINISHED);
            PyErr_Restore(type, value, tb);
            type = value = tb = NULL;
            Py_CLEAR(ret);
        } else {
            rtask_finish(t, T_FINISHED);
            if (value != NULL)
                rtask_report(t, value);
        }
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        break;
    }
    Py_DECREF(t);
    return ret;
}

/* the done callback of the awaited future (called with it), or a step scheduled by call_soon */
static PyObject *rtask_call(RequestTask *t, PyObject *args, PyObject *kwargs) {
    (void)args;
    (void)kwargs;
    return rtask_step(t);
}

static PyObject *rtask_cancel(RequestTask *t, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    PyObject *msg = nargs > 0 ? args[0] : NULL;
    if (kwnames != NULL && PyTuple_GET_SIZE(kwnames) == 1 && nargs == 0 &&
        PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "msg") == 0) {
        msg = args[0];
    } else if (nargs > 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) > 0)) {
        PyErr_SetString(PyExc_TypeError, "cancel(msg=None)");
        return NULL;
    }
    if (msg == Py_None)
        msg = NULL;
    if (t->state != T_PENDING)
        Py_RETURN_FALSE;
    t->num_cancels_requested++;
    if (t->waiter != NULL) {
        PyObject *waiter = t->waiter;
        Py_INCREF(waiter);
        PyObject *c = msg == NULL ? PyObject_CallMethodNoArgs(waiter, str_cancel)
                                  : PyObject_CallMethodOneArg(waiter, str_cancel, msg);
        Py_DECREF(waiter);
        if (c == NULL)
            return NULL;
        int yes = PyObject_IsTrue(c);
        Py_DECREF(c);
        if (yes < 0)
            return NULL;
        if (yes)
            Py_RETURN_TRUE;
    }
    t->must_cancel = 1;
    Py_XINCREF(msg);
    Py_XSETREF(t->cancel_msg, msg);
    Py_RETURN_TRUE;
}

static PyObject *rtask_done(RequestTask *t, PyObject *unused) {
    (void)unused;
    return PyBool_FromLong(t->state != T_PENDING);
}

static PyObject *rtask_cancelled(RequestTask *t, PyObject *unused) {
    (void)unused;
    return PyBool_FromLong(t->state == T_CANCELLED);
}

static PyObject *rtask_cancelling(RequestTask *t, PyObject *unused) {
    (void)unused;
    return PyLong_FromLong(t->num_cancels_requested);
}

static PyObject *rtask_uncancel(RequestTask *t, PyObject *unused) {
    (void)unused;
    if (t->num_cancels_requested > 0)
        t->num_cancels_requested--;
    return PyLong_FromLong(t->num_cancels_requested);
}

static PyObject *rtask_get_coro(RequestTask *t, PyObject *unused) {
    (void)unused;
    PyObject *c = t->coro != NULL ? t->coro : Py_None;
    Py_INCREF(c);
    return c;
}

static PyObject *rtask_get_loop(RequestTask *t, PyObject *unused) {
    (void)unused;
    Py_INCREF(t->loop);
    return t->loop;
}

static PyObject *rtask_get_name(RequestTask *t, PyObject *unused) {
    (void)t;
    (void)unused;
    Py_INCREF(str_name);
    return str_name;
}

static PyObject *rtask_fut_waiter(RequestTask *t, void *closure) {
    (void)closure;
    PyObject *w = t->waiter != NULL ? t->waiter : Py_None;
    Py_INCREF(w);
    return w;
}

static PyObject *rtask_must_cancel(RequestTask *t, void *closure) {
    (void)closure;
    return PyBool_FromLong(t->must_cancel);
}

static PyObject *rtask_repr(RequestTask *t) {
    const char *state = t->state == T_PENDING ? "pending" : t->state == T_CANCELLED ? "cancelled" : "finished";
    if (t->coro != NULL)
        return PyUnicode_FromFormat("<RequestTask %s coro=%R>", state, t->coro);
    return PyUnicode_FromFormat("<RequestTask %s>", state);
}

static PyMethodDef rtask_methods[] = {
    {"cancel", (PyCFunction)(void (*)(void))rtask_cancel, METH_FASTCALL | METH_KEYWORDS,
     "cancel(msg=None): as Task.cancel; True unless already done."},
    {"done", (PyCFunction)rtask_done, METH_NOARGS, "True once the coroutine ended."},
    {"cancelled", (PyCFunction)rtask_cancelled, METH_NOARGS, "True when the coroutine ended with CancelledError."},
    {"cancelling", (PyCFunction)rtask_cancelling, METH_NOARGS, "Pending cancellation requests (Task.cancelling)."},
    {"uncancel", (PyCFunction)rtask_uncancel, METH_NOARGS, "One cancellation request fewer (Task.uncancel)."},
    {"get_coro", (PyCFunction)rtask_get_coro, METH_NOARGS, "The coroutine (None once done)."},
    {"get_loop", (PyCFunction)rtask_get_loop, METH_NOARGS, "The event loop."},
    {"get_name", (PyCFunction)rtask_get_name, METH_NOARGS, "'shmserve-request'."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef rtask_getset[] = {
    {"_fut_waiter", (getter)rtask_fut_waiter, NULL, "the awaited future, or None", NULL},
    {"_must_cancel", (getter)rtask_must_cancel, NULL, "a cancel() waits for the next step", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RequestTask_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmserve._native._task.RequestTask",
    .tp_basicsize = sizeof(RequestTask),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "One request's coroutine, run without an asyncio.Task (see start_task).",
    .tp_dealloc = (destructor)rtask_dealloc,
    .tp_traverse = (traverseproc)rtask_traverse,
    .tp_clear = (inquiry)rtask_clear,
    .tp_call = (ternaryfunc)rtask_call,
    .tp_repr = (reprfunc)rtask_repr,
    .tp_weaklistoffset = offsetof(RequestTask, weakreflist),
    .tp_methods = rtask_methods,
    .tp_getset = rtask_getset,
};

/* start_task(coro, loop, conn) -> None: see the RequestTask comment above. */
static PyObject *start_task(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "start_task(coro, loop, conn)");
        return NULL;
    }
    if (current_tasks == NULL) {
        PyObject *aio = PyImport_ImportModule("_asyncio");
        PyObject *exc = PyImport_ImportModule("asyncio.exceptions");
        if (aio != NULL && exc != NULL) {
            current_tasks = PyObject_GetAttrString(aio, "_current_tasks");
            cancelled_error = PyObject_GetAttrString(exc, "CancelledError");
        }
        Py_XDECREF(aio);
        Py_XDECREF(exc);
        if (current_tasks == NULL || cancelled_error == NULL || !PyDict_Check(current_tasks)) {
            Py_CLEAR(current_tasks);
            Py_CLEAR(cancelled_error);
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_RuntimeError, "start_task: asyncio's _current_tasks is not a dict");
            return NULL;
        }
    }
    PyObject *context = PyContext_CopyCurrent();
    if (context == NULL)
        return NULL;
    RequestTask *t = PyObject_GC_New(RequestTask, &RequestTask_Type);
    if (t == NULL) {
        Py_DECREF(context);
        return NULL;
    }
    Py_INCREF(args[0]);
    Py_INCREF(args[1]);
    t->coro = args[0];
    t->loop = args[1];
    t->context = context;
    t->waiter = t->cancel_msg = t->pending_exc = t->weakreflist = NULL;
    t->state = T_PENDING;
    t->must_cancel = t->num_cancels_requested = 0;
    PyObject_GC_Track(t);
    PyObject *r = NULL;
    if (PyObject_SetAttr(args[2], str_task, (PyObject *)t) == 0 && PyContext_Enter(context) == 0) {
        r = rtask_step(t);
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        if (PyContext_Exit(context) < 0)
            PyErr_WriteUnraisable((PyObject *)t);
        PyErr_Restore(type, value, tb);
    }
    Py_DECREF(t);
    return r;
}

static PyMethodDef methods[] = {
    {"start_task", (PyCFunction)(void (*)(void))start_task, METH_FASTCALL,
     "start_task(coro, loop, conn): run coro as a RequestTask, set as conn.task, its first step now."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_task",
                                    "One HTTP request's coroutine, run without an asyncio.Task.", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__task(void) {
    struct { PyObject **slot; const char *name; } names[] = {
        {&str_blocking, "_asyncio_future_blocking"}, {&str_add_done_callback, "add_done_callback"},
        {&str_cancel, "cancel"}, {&str_get_loop, "get_loop"}, {&str_call_soon, "call_soon"}, {&str_task, "task"},
        {&str_call_exception_handler, "call_exception_handler"}, {&str_throw, "throw"}, {&str_message, "message"},
        {&str_exception, "exception"}, {&str_name, "shmserve-request"},
    };
    for (size_t k = 0; k < sizeof(names) / sizeof(names[0]); k++)
        if ((*names[k].slot = PyUnicode_InternFromString(names[k].name)) == NULL)
            return NULL;
    if ((kw_context = Py_BuildValue("(s)", "context")) == NULL || PyType_Ready(&RequestTask_Type) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&RequestTask_Type);
    if (PyModule_AddObject(m, "RequestTask", (PyObject *)&RequestTask_Type) < 0) {
        Py_DECREF(&RequestTask_Type);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
