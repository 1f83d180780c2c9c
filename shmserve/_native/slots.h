/* slots.h: the C twin of a Python class whose instances hold a fixed list of attributes (__slots__).
 *
 * A module declares its fields once, as an X-macro, and gets the rest from here:
 *
 *     #define PENDING_FIELDS(X) X(seq) X(link) ...
 *     typedef struct { PyObject_HEAD PENDING_FIELDS(SLOTS_DECLARE) } PendingObject;
 *     SLOTS_FUNCTIONS(pending, PendingObject, PENDING_FIELDS)
 *
 * declares one PyObject * per field and defines pending_traverse, pending_clear, pending_dealloc (the
 * instance is GC-tracked: its fields may point back at it) and pending_members, one member per field
 * that holds any object (T_OBJECT_EX, what a Python slot is: the interpreter specialises attribute
 * access to it the same way). The type's tp_new sets every field. */
#ifndef SHMSERVE_SLOTS_H
#define SHMSERVE_SLOTS_H

#include <Python.h>
#include <structmember.h>

#define SLOTS_DECLARE(f) PyObject *f;
#define SLOTS_VISIT_(f) Py_VISIT(o->f);
#define SLOTS_CLEAR_(f) Py_CLEAR(o->f);
#define SLOTS_MEMBER_(Obj, f) {#f, T_OBJECT_EX, offsetof(Obj, f), 0, NULL},

#define SLOTS_FUNCTIONS(prefix, Obj, FIELDS)                                                               \
    static int prefix##_traverse(Obj *o, visitproc visit, void *arg) {                                     \
        FIELDS(SLOTS_VISIT_)                                                                               \
        return 0;                                                                                          \
    }                                                                                                      \
    static int prefix##_clear(Obj *o) {                                                                    \
        FIELDS(SLOTS_CLEAR_)                                                                               \
        return 0;                                                                                          \
    }                                                                                                      \
    static void prefix##_dealloc(Obj *o) {                                                                 \
        PyObject_GC_UnTrack(o);                                                                            \
        prefix##_clear(o);                                                                                 \
        Py_TYPE(o)->tp_free((PyObject *)o);                                                                \
    }

/* The members table: `#define M(f) SLOTS_MEMBER_(PendingObject, f)` then
 * static PyMemberDef pending_members[] = {PENDING_FIELDS(M) {NULL, 0, 0, 0, NULL}}; */

/* The type object's GC and member slots, for a designated initializer. */
#define SLOTS_TYPE_SLOTS(prefix)                                                                           \
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, .tp_traverse = (traverseproc)prefix##_traverse,  \
    .tp_clear = (inquiry)prefix##_clear, .tp_dealloc = (destructor)prefix##_dealloc,                      \
    .tp_members = prefix##_members

#endif
