/*
 * asyncwatch.tasks._fastpath: the compiled twin of ``_purepath.py``.
 *
 * Two base classes hold what every task touches: ``StatsCore`` (a coroutine's counters and
 * its done-callback) and ``HookCore`` (the task factory's lookup and the untimed task's
 * path). ``_path.TaskStats`` and ``_path.LoopHook`` subclass whichever twin is in use and add
 * everything else in Python: first sight of a coroutine (``_lookup``), timed and spanned tasks
 * (``_slow``), error counting (``error``) and fault reports (``fault``). This file does only
 * what ``_purepath.py`` does, line for line; ``tests/test_fastpath.py`` runs both against the
 * same cases, and ``./scripts/test`` runs the task tests on each.
 *
 * Rules kept here, as in the Python twin:
 *  - the Task is made by the chained factory or ``asyncio.tasks.Task`` (read each call, as the
 *    Python code does), with the same arguments; the app's own errors from making it propagate;
 *  - errors of asyncwatch's own (an ``Exception``) after the Task exists go to ``self.fault``
 *    and the task is returned; a ``BaseException`` propagates;
 *  - the done-callback reads ``task._exception``, never ``exception()``, so asyncio's
 *    "exception was never retrieved" report is unchanged;
 *  - no references are kept: every object touched is released before returning.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#if PY_VERSION_HEX < 0x030B0000
#error "asyncwatch needs Python 3.11 or newer"
#endif

static PyObject *asyncio_tasks;  /* the asyncio.tasks module (Task is read from it per call) */
static PyObject *loop_kwnames;   /* ("loop",) */
static PyObject *s_cr_code, *s_Task, *s_cancelled, *s__exception, *s_error, *s_fault,
    *s_task_done, *s_task_factory, *s__lookup, *s__create, *s__slow, *s_done_callback,
    *s_add_done_callback;

/* The current exception (an Exception) goes to owner.fault(where, exc). Returns 0 when it was
 * reported, -1 when it must propagate (a BaseException, or fault() itself failed). */
static int
absorb(PyObject *owner, PyObject *where)
{
    if (!PyErr_ExceptionMatches(PyExc_Exception)) {
        return -1;
    }
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *exc = PyErr_GetRaisedException();
#else
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL) {
        PyException_SetTraceback(value, tb);
    }
    Py_XDECREF(type);
    Py_XDECREF(tb);
    PyObject *exc = value;
    if (exc == NULL) {
        return 0;
    }
#endif
    PyObject *fault = PyObject_GetAttr(owner, s_fault);
    if (fault == NULL) {
        Py_DECREF(exc);
        return -1;
    }
    PyObject *res = PyObject_CallFunctionObjArgs(fault, where, exc, NULL);
    Py_DECREF(fault);
    Py_DECREF(exc);
    if (res == NULL) {
        return -1;
    }
    Py_DECREF(res);
    return 0;
}

/* ------------------------------------------------------------------ StatsCore */

typedef struct {
    PyObject_HEAD
    long long created;
    long long done;
    long long peak;
    long long cancelled;
    long long failed;
    long long next_at;
    PyObject *done_cb;
} StatsCore;

static int
stats_traverse(StatsCore *self, visitproc visit, void *arg)
{
    Py_VISIT(self->done_cb);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static int
stats_clear(StatsCore *self)
{
    Py_CLEAR(self->done_cb);
    return 0;
}

static void
stats_dealloc(StatsCore *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    stats_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

/* Done-callback: count the task's outcome without retrieving its exception. */
static PyObject *
stats_on_done(StatsCore *self, PyObject *task)
{
    self->done++;
    PyObject *res = PyObject_CallMethodNoArgs(task, s_cancelled);
    if (res == NULL) {
        goto fail;
    }
    int cancelled = PyObject_IsTrue(res);
    Py_DECREF(res);
    if (cancelled < 0) {
        goto fail;
    }
    if (cancelled) {
        self->cancelled++;
        Py_RETURN_NONE;
    }
    PyObject *exc = PyObject_GetAttr(task, s__exception);
    if (exc == NULL) {
        if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
            PyErr_Clear();  /* a Future-like from a custom factory without the slot */
            Py_RETURN_NONE;
        }
        goto fail;
    }
    if (exc != Py_None) {
        res = PyObject_CallMethodOneArg((PyObject *)self, s_error, exc);
        Py_DECREF(exc);
        if (res == NULL) {
            goto fail;
        }
        Py_DECREF(res);
    }
    else {
        Py_DECREF(exc);
    }
    Py_RETURN_NONE;
fail:
    if (absorb((PyObject *)self, s_task_done) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef stats_methods[] = {
    {"on_done", (PyCFunction)stats_on_done, METH_O,
     "Done-callback: count the task's outcome without retrieving its exception."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef stats_members[] = {
    {"created", T_LONGLONG, offsetof(StatsCore, created), 0, "tasks created"},
    {"done", T_LONGLONG, offsetof(StatsCore, done), 0, "tasks finished"},
    {"peak", T_LONGLONG, offsetof(StatsCore, peak), 0, "most tasks in flight at once"},
    {"cancelled", T_LONGLONG, offsetof(StatsCore, cancelled), 0, "tasks cancelled"},
    {"failed", T_LONGLONG, offsetof(StatsCore, failed), 0, "tasks that raised"},
    {"next_at", T_LONGLONG, offsetof(StatsCore, next_at), 0,
     "the task count at which the hook takes its slow path"},
    {"done_cb", T_OBJECT, offsetof(StatsCore, done_cb), 0, "on_done, bound once"},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot stats_slots[] = {
    {Py_tp_doc, "Per-coroutine counters and the done-callback (compiled)."},
    {Py_tp_traverse, stats_traverse},
    {Py_tp_clear, stats_clear},
    {Py_tp_dealloc, stats_dealloc},
    {Py_tp_methods, stats_methods},
    {Py_tp_members, stats_members},
    {0, NULL},
};

static PyType_Spec stats_spec = {
    .name = "asyncwatch.tasks._fastpath.StatsCore",
    .basicsize = sizeof(StatsCore),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = stats_slots,
};

static PyTypeObject *StatsCore_Type;

/* ------------------------------------------------------------------ HookCore */

typedef struct {
    PyObject_HEAD
    PyObject *by_code;   /* id(code object) -> TaskStats */
    PyObject *inner;     /* the chained factory, or None */
    PyObject *requests;  /* the ASGI middleware's request ContextVar, or None */
} HookCore;

static int
hook_traverse(HookCore *self, visitproc visit, void *arg)
{
    Py_VISIT(self->by_code);
    Py_VISIT(self->inner);
    Py_VISIT(self->requests);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static int
hook_clear(HookCore *self)
{
    Py_CLEAR(self->by_code);
    Py_CLEAR(self->inner);
    Py_CLEAR(self->requests);
    return 0;
}

static void
hook_dealloc(HookCore *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    hook_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

/* The keyword arguments of a factory call as a new dict (the slow paths take one). */
static PyObject *
kwargs_dict(PyObject *const *kwvalues, PyObject *kwnames)
{
    PyObject *kwargs = PyDict_New();
    if (kwargs == NULL || kwnames == NULL) {
        return kwargs;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(kwnames);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (PyDict_SetItem(kwargs, PyTuple_GET_ITEM(kwnames, i), kwvalues[i]) < 0) {
            Py_DECREF(kwargs);
            return NULL;
        }
    }
    return kwargs;
}

/* inner(loop, coro, **kw), else asyncio.tasks.Task(coro, loop=loop, **kw). */
static PyObject *
make_task(HookCore *self, PyObject *const *args, PyObject *kwnames)
{
    PyObject *inner = self->inner;
    if (inner != NULL && inner != Py_None) {
        Py_INCREF(inner);  /* the call may replace self->inner */
        PyObject *task = PyObject_Vectorcall(inner, args, 2, kwnames);
        Py_DECREF(inner);
        return task;
    }
    PyObject *task_type = PyObject_GetAttr(asyncio_tasks, s_Task);
    if (task_type == NULL) {
        return NULL;
    }
    PyObject *task;
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    if (nkw == 0) {
        PyObject *stack[2] = {args[1], args[0]};
        task = PyObject_Vectorcall(task_type, stack, 1, loop_kwnames);
    }
    else {
        /* Task(coro, loop=loop, **kw): the names tuple gains "loop" in front */
        PyObject *names = PyTuple_New(nkw + 1);
        PyObject **stack = PyMem_Malloc((nkw + 2) * sizeof(PyObject *));
        if (names == NULL || stack == NULL) {
            Py_XDECREF(names);
            PyMem_Free(stack);
            Py_DECREF(task_type);
            return PyErr_NoMemory();
        }
        Py_INCREF(PyTuple_GET_ITEM(loop_kwnames, 0));
        PyTuple_SET_ITEM(names, 0, PyTuple_GET_ITEM(loop_kwnames, 0));
        stack[0] = args[1];
        stack[1] = args[0];
        for (Py_ssize_t i = 0; i < nkw; i++) {
            PyObject *name = PyTuple_GET_ITEM(kwnames, i);
            Py_INCREF(name);
            PyTuple_SET_ITEM(names, i + 1, name);
            stack[i + 2] = args[i + 2];
        }
        task = PyObject_Vectorcall(task_type, stack, 1, names);
        PyMem_Free(stack);
        Py_DECREF(names);
    }
    Py_DECREF(task_type);
    return task;
}

/* After the Task exists: count it and add its done-callback. 0, or -1 to propagate. */
static int
count_task(HookCore *self, StatsCore *st, PyObject *task)
{
    /* Re-read, not the count taken before the Task was made: an eager task (3.12+) runs its
     * first step inside that call, and tasks it creates there count themselves first. */
    long long created = st->created + 1;
    st->created = created;
    long long in_flight = created - st->done;
    if (in_flight > st->peak) {
        st->peak = in_flight;
    }
    PyObject *callback;
    PyObject *requests = self->requests;
    if (requests == NULL || requests == Py_None) {
        callback = st->done_cb;
        Py_XINCREF(callback);
    }
    else {  /* one ContextVar read, only while an ASGI middleware is active */
        PyObject *request;
        if (PyContextVar_Get(requests, Py_None, &request) < 0) {
            goto fail;
        }
        if (request == Py_None) {
            callback = st->done_cb;
            Py_XINCREF(callback);
        }
        else {  /* created while handling a request: counted for it too */
            callback = PyObject_CallMethodOneArg(request, s_done_callback, (PyObject *)st);
            if (callback == NULL) {
                Py_DECREF(request);
                goto fail;
            }
        }
        Py_DECREF(request);
    }
    if (callback == NULL) {
        PyErr_SetString(PyExc_AttributeError, "TaskStats.done_cb is not set");
        goto fail;
    }
    PyObject *res = PyObject_CallMethodOneArg(task, s_add_done_callback, callback);
    Py_DECREF(callback);
    if (res == NULL) {
        goto fail;
    }
    Py_DECREF(res);
    return 0;
fail:
    return absorb((PyObject *)self, s_task_factory);
}

/* The coroutine's TaskStats (a new reference), or NULL with no error set when it is not
 * known (or has no code object), or NULL with an error that must propagate. */
static PyObject *
find_stats(HookCore *self, PyObject *coro)
{
    PyObject *by_code = self->by_code;
    if (by_code == NULL) {
        return NULL;
    }
    PyObject *code;
#if PY_VERSION_HEX < 0x030C0000
    if (PyCoro_CheckExact(coro)) {  /* 3.11 keeps the code object on the coroutine itself */
        code = (PyObject *)((PyCoroObject *)coro)->cr_code;
        Py_INCREF(code);
    }
    else
#endif
    code = PyObject_GetAttr(coro, s_cr_code);
    if (code == NULL) {
        if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
            PyErr_Clear();
        }
        return NULL;
    }
    PyObject *key = PyLong_FromVoidPtr(code);
    Py_DECREF(code);
    if (key == NULL) {
        return NULL;
    }
    PyObject *stats;
    if (PyDict_CheckExact(by_code)) {
        stats = PyDict_GetItemWithError(by_code, key);
        Py_XINCREF(stats);
    }
    else {
        stats = PyObject_GetItem(by_code, key);
        if (stats == NULL && PyErr_ExceptionMatches(PyExc_KeyError)) {
            PyErr_Clear();
        }
    }
    Py_DECREF(key);
    return stats;
}

/* The task factory: (loop, coro, **kwargs) -> Task. */
static PyObject *
hook_factory(HookCore *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError,
                     "task factory takes (loop, coro, **kwargs), got %zd positional arguments",
                     nargs);
        return NULL;
    }
    PyObject *loop = args[0], *coro = args[1];
    PyObject *stats = find_stats(self, coro);
    if (stats == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        stats = PyObject_CallMethodOneArg((PyObject *)self, s__lookup, coro);
        if (stats == NULL) {
            return NULL;
        }
        if (stats == Py_None) {
            Py_DECREF(stats);
            PyObject *kwargs = kwargs_dict(args + 2, kwnames);
            if (kwargs == NULL) {
                return NULL;
            }
            PyObject *task = PyObject_CallMethodObjArgs((PyObject *)self, s__create, loop, coro,
                                                        kwargs, NULL);
            Py_DECREF(kwargs);
            return task;
        }
    }
    if (!PyObject_TypeCheck(stats, StatsCore_Type)) {  /* not ours: pass the task through */
        Py_DECREF(stats);
        return make_task(self, args, kwnames);
    }
    StatsCore *st = (StatsCore *)stats;
    long long created = st->created + 1;
    if (created >= st->next_at) {  /* timed or spanned: the Python slow path */
        PyObject *kwargs = kwargs_dict(args + 2, kwnames);
        PyObject *count = PyLong_FromLongLong(created);
        PyObject *task = NULL;
        if (kwargs != NULL && count != NULL) {
            task = PyObject_CallMethodObjArgs((PyObject *)self, s__slow, stats, count, loop,
                                              coro, kwargs, NULL);
        }
        Py_XDECREF(kwargs);
        Py_XDECREF(count);
        Py_DECREF(stats);
        return task;
    }
    PyObject *task = make_task(self, args, kwnames);
    if (task != NULL && count_task(self, st, task) < 0) {
        Py_CLEAR(task);
    }
    Py_DECREF(stats);
    return task;
}

static PyMethodDef hook_methods[] = {
    {"_factory", (PyCFunction)(void (*)(void))hook_factory, METH_FASTCALL | METH_KEYWORDS,
     "The task factory: (loop, coro, **kwargs) -> Task."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef hook_members[] = {
    {"by_code", T_OBJECT, offsetof(HookCore, by_code), 0, "id(code object) -> TaskStats"},
    {"inner", T_OBJECT, offsetof(HookCore, inner), 0, "the chained task factory, or None"},
    {"requests", T_OBJECT, offsetof(HookCore, requests), 0,
     "the ASGI middleware's request ContextVar, or None"},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot hook_slots[] = {
    {Py_tp_doc, "The task factory's hot path (compiled)."},
    {Py_tp_traverse, hook_traverse},
    {Py_tp_clear, hook_clear},
    {Py_tp_dealloc, hook_dealloc},
    {Py_tp_methods, hook_methods},
    {Py_tp_members, hook_members},
    {0, NULL},
};

static PyType_Spec hook_spec = {
    .name = "asyncwatch.tasks._fastpath.HookCore",
    .basicsize = sizeof(HookCore),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = hook_slots,
};

/* ------------------------------------------------------------------ module */

static int
intern(PyObject **slot, const char *text)
{
    *slot = PyUnicode_InternFromString(text);
    return *slot == NULL ? -1 : 0;
}

static struct PyModuleDef fastpath_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "asyncwatch.tasks._fastpath",
    .m_doc = "The task path's hot functions in C (see _purepath.py for the Python twin).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__fastpath(void)
{
    if (intern(&s_cr_code, "cr_code") < 0 || intern(&s_Task, "Task") < 0 ||
        intern(&s_cancelled, "cancelled") < 0 || intern(&s__exception, "_exception") < 0 ||
        intern(&s_error, "error") < 0 || intern(&s_fault, "fault") < 0 ||
        intern(&s_task_done, "task_done") < 0 || intern(&s_task_factory, "task_factory") < 0 ||
        intern(&s__lookup, "_lookup") < 0 || intern(&s__create, "_create") < 0 ||
        intern(&s__slow, "_slow") < 0 || intern(&s_done_callback, "done_callback") < 0 ||
        intern(&s_add_done_callback, "add_done_callback") < 0) {
        return NULL;
    }
    loop_kwnames = Py_BuildValue("(s)", "loop");
    if (loop_kwnames == NULL) {
        return NULL;
    }
    asyncio_tasks = PyImport_ImportModule("asyncio.tasks");
    if (asyncio_tasks == NULL) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&fastpath_module);
    if (module == NULL) {
        return NULL;
    }
    StatsCore_Type = (PyTypeObject *)PyType_FromSpec(&stats_spec);
    if (StatsCore_Type == NULL ||
        PyModule_AddObjectRef(module, "StatsCore", (PyObject *)StatsCore_Type) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    PyObject *hook_type = PyType_FromSpec(&hook_spec);
    if (hook_type == NULL || PyModule_AddObject(module, "HookCore", hook_type) < 0) {
        Py_XDECREF(hook_type);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
