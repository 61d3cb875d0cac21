/*
 * asyncwatch.asgi._fastexchange: the compiled twin of ``_pureexchange.py``.
 *
 * ``HttpCore`` holds the fields every HTTP request reads and writes as C members, and does the
 * request path's per-message work: ``new_http`` (the exchange of one request, counted in
 * flight), ``send`` and ``receive`` (the server's, observed: each returns an awaitable that
 * forwards every step to the server's own awaitable), ``record`` and ``finish`` for the common
 * request. ``_exchange.HttpExchange`` subclasses whichever twin is in use and adds everything
 * else in Python; every request this file does not handle the common way (``plain`` false, no
 * shortcut to its figures yet, a task counted, anything odd) goes to ``record_full`` or
 * ``finish_full`` there, which handle every case.
 *
 * Rules kept here, as in the Python twin:
 *  - messages pass through as the very same objects; the server's awaitable is driven as
 *    ``await`` drives it (``send``, ``throw``, ``close`` forwarded), so cancellation and the
 *    server's own errors reach the app unchanged;
 *  - a message this code does not understand (a ``KeyError``, ``TypeError`` or
 *    ``AttributeError`` reading it) is passed on unobserved, like the Python twin's ``except``;
 *  - nothing asyncwatch does after the server's ``send`` returned reaches the app: errors of
 *    its own (an ``Exception``) go to ``obs.fault``;
 *  - an ``OSError`` from the server's ``send`` marks the client gone, then propagates.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <pythread.h>

#if PY_VERSION_HEX < 0x030B0000
#error "asyncwatch needs Python 3.11 or newer"
#endif

static PyTypeObject *exchange_type; /* _exchange.HttpExchange, set by bind() */
static PyObject *request_var;       /* _exchange.REQUEST, set by bind() */
static PyObject *clock_fn;          /* _core.measure.clock, set by bind() */
#if defined(__linux__)
#include <time.h>
/* clock_fn is time.perf_counter, read here the way it reads itself on Linux (CLOCK_MONOTONIC,
 * nanoseconds to float seconds as _PyTime_AsSecondsDouble does): the same values without a
 * call. */
static int clock_inline;
#endif
static Py_ssize_t max_shortcuts = 512; /* _http.MAX_SHORTCUTS, set by bind() */
static Py_ssize_t fold_at = 256;    /* _http.FOLD_AT, set by bind() */
static PyObject *empty_bytes, *one;

static PyObject *s_type, *s_body, *s_more_body, *s_status, *s_trailers, *s_more_trailers,
    *s_http_request, *s_http_disconnect, *s_resp_body, *s_resp_start, *s_resp_trailers,
    *s_resp_pathsend, *s_record_full, *s_finish_full, *s_fault, *s_asgi_request, *s_get,
    *s_stats, *s_shard, *s_live, *s_route, *s_path_format, *s_root_path,
    *s_scheme, *s_http_version, *s_fastapi, *s_by_route, *s_durations, *s_request_sizes,
    *s_response_sizes, *s_fold, *s_zero_tasks, *s_throw, *s_close, *s_value,
    *s_by_route_object, *s_by_thread, *s_last_shard, *s_last_thread;

/* ------------------------------------------------------------------ helpers */

/* message[key]: a new reference, or NULL with an error set. */
static PyObject *
item(PyObject *m, PyObject *key)
{
    if (PyDict_CheckExact(m)) {
        PyObject *v = PyDict_GetItemWithError(m, key);
        if (v != NULL) {
            return Py_NewRef(v);
        }
        if (!PyErr_Occurred()) {
            PyErr_SetObject(PyExc_KeyError, key);
        }
        return NULL;
    }
    return PyObject_GetItem(m, key);
}

/* message.get(key, dflt): a new reference, or NULL with an error set. */
static PyObject *
get(PyObject *m, PyObject *key, PyObject *dflt)
{
    if (PyDict_CheckExact(m)) {
        PyObject *v = PyDict_GetItemWithError(m, key);
        if (v != NULL) {
            return Py_NewRef(v);
        }
        if (PyErr_Occurred()) {
            return NULL;
        }
        return Py_NewRef(dflt);
    }
    if (dflt == Py_None) {
        return PyObject_CallMethodOneArg(m, s_get, key);
    }
    return PyObject_CallMethodObjArgs(m, s_get, key, dflt, NULL);
}

/* kind == literal (1, 0, or -1 with an error set), as Python's == decides. */
static int
same(PyObject *kind, PyObject *literal)
{
    if (kind == literal) {
        return 1;
    }
    if (PyUnicode_CheckExact(kind)) {
        return PyUnicode_GET_LENGTH(kind) == PyUnicode_GET_LENGTH(literal)
               && PyUnicode_Compare(kind, literal) == 0;
    }
    return PyObject_RichCompareBool(kind, literal, Py_EQ);
}

/* The truth of message.get(key) (1, 0, or -1 with an error set). */
static int
truthy_get(PyObject *m, PyObject *key)
{
    PyObject *v = get(m, key, Py_None);
    if (v == NULL) {
        return -1;
    }
    int t = PyObject_IsTrue(v);
    Py_DECREF(v);
    return t;
}

/* The error set is one of those a message the code does not understand raises. */
static int
unreadable(void)
{
    return PyErr_ExceptionMatches(PyExc_KeyError) || PyErr_ExceptionMatches(PyExc_TypeError)
           || PyErr_ExceptionMatches(PyExc_AttributeError);
}

/* The current exception (an Exception) goes to obs.fault(where, exc). 0 when it was reported,
 * -1 when it must propagate (a BaseException, or fault() itself failed). */
static int
absorb(PyObject *obs, PyObject *where)
{
    if (!PyErr_ExceptionMatches(PyExc_Exception)) {
        return -1;
    }
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL) {
        PyException_SetTraceback(value, tb);
    }
    Py_XDECREF(type);
    Py_XDECREF(tb);
    if (value == NULL) {
        return 0;
    }
    if (obs == NULL || obs == Py_None) { /* an exchange made by hand, with no observer */
        Py_DECREF(value);
        return 0;
    }
    PyObject *res = PyObject_CallMethodObjArgs(obs, s_fault, where, value, NULL);
    Py_DECREF(value);
    if (res == NULL) {
        return -1;
    }
    Py_DECREF(res);
    return 0;
}

/* The clock's reading as a float object (a new reference), or NULL with an error set. */
static PyObject *
clock_now(void)
{
#if defined(__linux__)
    if (clock_inline) {
        struct timespec ts;
        if (clock_gettime(CLOCK_MONOTONIC, &ts) == 0) {
            long long ns = (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
            double seconds = ns % 1000000000LL == 0 ? (double)(ns / 1000000000LL)
                                                    : (double)ns / 1e9;
            return PyFloat_FromDouble(seconds);
        }
    }
#endif
    return PyObject_CallNoArgs(clock_fn);
}

/* ------------------------------------------------------------------ __slots__ fields */

/* A field of RequestSlot or HttpShard (both __slots__ classes) read and written at its offset,
 * as Python's own specialised attribute access does, when the object is of the class bind()
 * was given; by name otherwise (a subclass, a stand-in in a test). */
typedef struct {
    PyTypeObject *type;  /* the class, or NULL before bind() */
    Py_ssize_t offset;   /* the slot's offset in it, or -1: read by name */
    PyObject **name;
} Field;

enum { F_ROUTE, F_DURATIONS, F_REQUEST_SIZES, F_RESPONSE_SIZES, F_ZERO_TASKS, F_LIVE,
       F_BY_ROUTE, F_BY_ROUTE_OBJECT, F_OBS_BY_THREAD, F_OBS_STATS, F_OBS_SHARD,
       F_OBS_SHARD_THREAD, F_COUNT };
static Field fields[F_COUNT];

/* The field's value (a new reference), or NULL with an error set. */
static PyObject *
field_get(PyObject *obj, int which)
{
    Field *f = &fields[which];
    if (Py_TYPE(obj) == f->type && f->offset >= 0) {
        PyObject *v = *(PyObject **)((char *)obj + f->offset);
        if (v != NULL) {
            return Py_NewRef(v);
        }
    }
    return PyObject_GetAttr(obj, *f->name);
}


/* Set the field (0), or -1 with an error set. */
static int
field_set(PyObject *obj, int which, PyObject *value)
{
    Field *f = &fields[which];
    if (Py_TYPE(obj) == f->type && f->offset >= 0) {
        Py_XSETREF(*(PyObject **)((char *)obj + f->offset), Py_NewRef(value));
        return 0;
    }
    return PyObject_SetAttr(obj, *f->name, value);
}

/* Where ``type``'s slot ``name`` is (its member descriptor), or -1: read it by name. */
static Py_ssize_t
slot_offset(PyTypeObject *type, PyObject *name)
{
    PyObject *descr = PyDict_GetItemWithError(type->tp_dict, name);
    if (descr == NULL || Py_TYPE(descr) != &PyMemberDescr_Type) {
        PyErr_Clear();
        return -1;
    }
    PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
    if (member->type != T_OBJECT_EX || (member->flags & READONLY)) {
        return -1;
    }
    return member->offset;
}

static void
bind_field(int which, PyTypeObject *type, PyObject **name)
{
    fields[which].type = type;
    fields[which].name = name;
    fields[which].offset = slot_offset(type, *name);
}

/* ------------------------------------------------------------------ HttpCore */

typedef struct {
    PyObject_HEAD
    PyObject *obs;
    PyObject *scope;
    PyObject *receive_;
    PyObject *send_;
    PyObject *shard;
    PyObject *method;
    PyObject *root_path;
    PyObject *status; /* an int, or NULL (None) */
    PyObject *end;    /* a float, or NULL (None) */
    PyObject *slot;
    PyObject *route;
    PyObject *token; /* what new_http(..., enter=True) set REQUEST with, until finish */
    double started;
    Py_ssize_t tasks;
    Py_ssize_t req_bytes;
    Py_ssize_t resp_bytes;
    char recorded;
    char plain;
    char trailers;
    char disconnected;
    char status_unsent;
    char finished;
} Core;

static int
core_traverse(Core *self, visitproc visit, void *arg)
{
    Py_VISIT(self->obs);
    Py_VISIT(self->scope);
    Py_VISIT(self->receive_);
    Py_VISIT(self->send_);
    Py_VISIT(self->shard);
    Py_VISIT(self->method);
    Py_VISIT(self->root_path);
    Py_VISIT(self->status);
    Py_VISIT(self->end);
    Py_VISIT(self->slot);
    Py_VISIT(self->route);
    Py_VISIT(self->token);
    return 0;
}

static int
core_clear(Core *self)
{
    Py_CLEAR(self->obs);
    Py_CLEAR(self->scope);
    Py_CLEAR(self->receive_);
    Py_CLEAR(self->send_);
    Py_CLEAR(self->shard);
    Py_CLEAR(self->method);
    Py_CLEAR(self->root_path);
    Py_CLEAR(self->status);
    Py_CLEAR(self->end);
    Py_CLEAR(self->slot);
    Py_CLEAR(self->route);
    Py_CLEAR(self->token);
    return 0;
}

static void
core_dealloc(Core *self)
{
    PyObject_GC_UnTrack(self);
    core_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* status is None or below 500 (-1 with an error set). */
static int
below_500(PyObject *status)
{
    if (status == NULL || status == Py_None) {
        return 1;
    }
    int overflow = 0;
    long value = PyLong_AsLongAndOverflow(status, &overflow);
    if (value == -1 && PyErr_Occurred()) {
        return -1;
    }
    return overflow == 0 && value < 500;
}

/* list.append(value) on an attribute of ``owner`` (0, or -1 with an error set). */
static int
append_to(PyObject *owner, int name, PyObject *value, Py_ssize_t *size)
{
    PyObject *list = field_get(owner, name);
    if (list == NULL) {
        return -1;
    }
    int rc;
    if (PyList_CheckExact(list)) {
        rc = PyList_Append(list, value);
        if (size != NULL) {
            *size = PyList_GET_SIZE(list);
        }
    }
    else {
        PyObject *res = PyObject_CallMethod(list, "append", "O", value);
        rc = res == NULL ? -1 : 0;
        Py_XDECREF(res);
        if (size != NULL && rc == 0) {
            *size = PyObject_Length(list);
            rc = *size < 0 ? -1 : 0;
        }
    }
    Py_DECREF(list);
    return rc;
}

/* ``a == b`` for the cache's fields: 1, 0, or -1 with an error set. */
static int
equal(PyObject *a, PyObject *b)
{
    return a == b ? 1 : PyObject_RichCompareBool(a, b, Py_EQ);
}

/* The shortcut to the figures of a common request (a new reference), or NULL: the long way
 * (NULL with an error set only for an error that must propagate). Reads only, but for the
 * shard's cache by route object.
 *
 * The shortcut is the shard's ``by_route`` entry for (route template, method, status, scheme,
 * version), as ``record_full`` finds it. In front of it, ``by_route_object`` maps the address
 * of the scope's route object to (route, method, status, scheme, version, slot) as last found
 * for that route: one int lookup and four compares instead of reading the template and hashing
 * and comparing a five-field key (Starlette's routes are not hashable themselves). The entry
 * holds the route, so its address cannot be reused while it is there; both maps are bounded by
 * MAX_SHORTCUTS. */
static PyObject *
shortcut(Core *self)
{
    PyObject *scope = self->scope, *route = NULL, *root = NULL, *key = NULL, *slot = NULL;
    PyObject *by_route = NULL, *cache = NULL, *address = NULL, *template = NULL;
    PyObject *method = self->method != NULL ? self->method : Py_None;
    if (!self->plain || scope == NULL || !PyDict_CheckExact(scope) || self->status == NULL
        || self->status == Py_None || self->shard == NULL) {
        return NULL;
    }
    int low = below_500(self->status);
    if (low <= 0) {
        goto done;
    }
    int has = PyDict_Contains(scope, s_fastapi);
    if (has != 0) {
        goto done;
    }
    PyObject *found = PyDict_GetItemWithError(scope, s_route);
    if (found == NULL || found == Py_None) {
        goto done;
    }
    route = Py_NewRef(found);
    found = PyDict_GetItemWithError(scope, s_root_path);
    if (found == NULL || self->root_path == NULL) {
        goto done;
    }
    root = Py_NewRef(found);
    int eq = PyObject_RichCompareBool(root, self->root_path, Py_EQ);
    if (eq <= 0) {
        goto done;
    }
    PyObject *scheme = PyDict_GetItemWithError(scope, s_scheme);
    if (scheme == NULL) {
        goto done;
    }
    PyObject *version = PyDict_GetItemWithError(scope, s_http_version);
    if (version == NULL) {
        goto done;
    }
    cache = field_get(self->shard, F_BY_ROUTE_OBJECT);
    if (cache == NULL || !PyDict_CheckExact(cache)) {
        goto done;
    }
    address = PyLong_FromVoidPtr(route);
    if (address == NULL) {
        goto done;
    }
    PyObject *entry = PyDict_GetItemWithError(cache, address);
    if (entry != NULL && PyTuple_CheckExact(entry) && PyTuple_GET_SIZE(entry) == 6
        && PyTuple_GET_ITEM(entry, 0) == route) {
        Py_INCREF(entry);
        int same_key = 1;
        PyObject *mine[4] = {method, self->status, scheme, version};
        for (int i = 0; i < 4 && same_key > 0; i++) {
            same_key = equal(PyTuple_GET_ITEM(entry, i + 1), mine[i]);
        }
        if (same_key > 0) {
            slot = Py_NewRef(PyTuple_GET_ITEM(entry, 5));
        }
        Py_DECREF(entry);
        if (same_key != 0) {
            goto done; /* found, or an error */
        }
    }
    else if (entry == NULL && PyErr_Occurred()) {
        goto done;
    }
    template = PyObject_GetAttr(route, s_path_format);
    if (template == NULL) {
        goto done;
    }
    key = PyTuple_Pack(5, template, method, self->status, scheme, version);
    if (key == NULL) {
        goto done;
    }
    by_route = field_get(self->shard, F_BY_ROUTE);
    if (by_route == NULL || !PyDict_CheckExact(by_route)) {
        goto done;
    }
    slot = PyDict_GetItemWithError(by_route, key);
    if (slot == NULL) {
        goto done;
    }
    Py_INCREF(slot);
    if (PyDict_GET_SIZE(cache) < max_shortcuts || PyDict_Contains(cache, address) == 1) {
        PyObject *fresh = PyTuple_Pack(6, route, method, self->status, scheme, version, slot);
        if (fresh == NULL || PyDict_SetItem(cache, address, fresh) < 0) {
            Py_CLEAR(slot);
        }
        Py_XDECREF(fresh);
    }
done:
    Py_XDECREF(route);
    Py_XDECREF(root);
    Py_XDECREF(key);
    Py_XDECREF(by_route);
    Py_XDECREF(cache);
    Py_XDECREF(address);
    Py_XDECREF(template);
    if (slot == NULL && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) {
            return NULL; /* a BaseException: it propagates, as from the Python twin */
        }
        PyErr_Clear(); /* the long way meets the same error and handles it */
    }
    return slot;
}

/* record(end): the request's figures, once. 0, or -1 with a BaseException set. */
static int
core_record_impl(Core *self, PyObject *end_obj)
{
    PyObject *slot = shortcut(self);
    if (slot == NULL) {
        if (PyErr_Occurred()) {
            return -1;
        }
        PyObject *res = PyObject_CallMethodOneArg((PyObject *)self, s_record_full, end_obj);
        if (res == NULL) {
            return absorb(self->obs, s_asgi_request);
        }
        Py_DECREF(res);
        return 0;
    }
    PyObject *live = NULL, *route = NULL, *num = NULL;
    double end = PyFloat_AsDouble(end_obj);
    if (end == -1.0 && PyErr_Occurred()) {
        goto error;
    }
    self->recorded = 1;
    live = field_get(self->shard, F_LIVE);
    if (live == NULL) {
        goto error;
    }
    if (PySet_Check(live)) {
        if (PySet_Discard(live, (PyObject *)self) < 0) {
            goto error;
        }
    }
    else {
        PyObject *res = PyObject_CallMethod(live, "discard", "O", (PyObject *)self);
        if (res == NULL) {
            goto error;
        }
        Py_DECREF(res);
    }
    Py_XSETREF(self->slot, Py_NewRef(slot));
    route = field_get(slot, F_ROUTE);
    if (route == NULL) {
        goto error;
    }
    Py_XSETREF(self->route, route);
    route = NULL;
    num = PyFloat_FromDouble(end - self->started);
    if (num == NULL || append_to(slot, F_DURATIONS, num, NULL) < 0) {
        goto error;
    }
    Py_SETREF(num, PyLong_FromSsize_t(self->req_bytes));
    if (num == NULL || append_to(slot, F_REQUEST_SIZES, num, NULL) < 0) {
        goto error;
    }
    Py_SETREF(num, PyLong_FromSsize_t(self->resp_bytes));
    Py_ssize_t size = 0;
    if (num == NULL || append_to(slot, F_RESPONSE_SIZES, num, &size) < 0) {
        goto error;
    }
    if (size >= fold_at) {
        PyObject *res = PyObject_CallMethodOneArg(self->shard, s_fold, slot);
        if (res == NULL) {
            goto error;
        }
        Py_DECREF(res);
    }
    Py_DECREF(num);
    Py_DECREF(live);
    Py_DECREF(slot);
    return 0;
error:
    Py_XDECREF(num);
    Py_XDECREF(live);
    Py_XDECREF(route);
    Py_DECREF(slot);
    return absorb(self->obs, s_asgi_request);
}

static PyObject *
core_record(Core *self, PyObject *end)
{
    if (core_record_impl(self, end) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
core_finish(Core *self, PyObject *Py_UNUSED(ignored))
{
    if (self->token != NULL && self->token != Py_None) { /* REQUEST back to what it was */
        PyObject *token = self->token;
        self->token = NULL;
        int rc = PyContextVar_Reset(request_var, token);
        Py_DECREF(token);
        if (rc < 0) {
            return NULL;
        }
    }
    if (!(self->recorded && self->plain && self->tasks == 0 && self->slot != NULL
          && self->slot != Py_None)) {
        return PyObject_CallMethodNoArgs((PyObject *)self, s_finish_full);
    }
    self->finished = 1;
    PyObject *zero = field_get(self->slot, F_ZERO_TASKS);
    if (zero != NULL) {
        PyObject *more = PyNumber_Add(zero, one);
        Py_DECREF(zero);
        if (more != NULL) {
            int rc = field_set(self->slot, F_ZERO_TASKS, more);
            Py_DECREF(more);
            if (rc == 0) {
                Py_RETURN_NONE;
            }
        }
    }
    if (absorb(self->obs, s_asgi_request) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* The request's last part was sent: it ends now (never raises but a BaseException). */
static int
core_ended(Core *self)
{
    if (self->end != NULL && self->end != Py_None) {
        return 0;
    }
    PyObject *end = clock_now();
    if (end == NULL) {
        return absorb(self->obs, s_asgi_request);
    }
    Py_XSETREF(self->end, end);
    int low = below_500(self->status);
    if (low < 0) {
        return absorb(self->obs, s_asgi_request);
    }
    if (low) {
        Py_INCREF(end);
        int rc = core_record_impl(self, end);
        Py_DECREF(end);
        return rc;
    }
    return 0;
}

/* The server's send raised an OSError: the client is gone (``start``: the message was the
 * status line). */
static void
core_gone(Core *self, int start)
{
    if (self->end != NULL && self->end != Py_None) {
        return;
    }
    self->disconnected = 1;
    self->plain = 0;
    if (self->status == NULL || self->status == Py_None || start) {
        self->status_unsent = 1;
    }
}

/* Read what a message to send says. 0 (``*last``, ``*start`` set), or -1 to propagate. */
static int
core_read_sent(Core *self, PyObject *m, char *last, char *start)
{
    PyObject *kind = item(m, s_type);
    int r, t;
    if (kind == NULL) {
        goto error;
    }
    if ((r = same(kind, s_resp_body)) != 0) {
        if (r < 0) {
            goto error;
        }
        PyObject *body = get(m, s_body, Py_None);
        if (body == NULL) {
            goto error;
        }
        t = PyObject_IsTrue(body);
        if (t > 0) {
            Py_ssize_t len = PyObject_Length(body);
            if (len < 0) {
                Py_DECREF(body);
                goto error;
            }
            self->resp_bytes += len;
        }
        Py_DECREF(body);
        if (t < 0 || (t = truthy_get(m, s_more_body)) < 0) {
            goto error;
        }
        *last = !t && (self->plain || !self->trailers);
    }
    else if ((r = same(kind, s_resp_start)) != 0) {
        if (r < 0) {
            goto error;
        }
        *start = 1;
        PyObject *status = item(m, s_status);
        if (status == NULL) {
            goto error;
        }
        if (PyLong_CheckExact(status)) {
            Py_XSETREF(self->status, status);
        }
        else {
            Py_DECREF(status);
            Py_CLEAR(self->status);
        }
        if ((t = truthy_get(m, s_trailers)) < 0) {
            goto error;
        }
        if (t) {
            self->trailers = 1;
            self->plain = 0;
        }
    }
    else if ((r = same(kind, s_resp_trailers)) != 0) {
        if (r < 0 || (t = truthy_get(m, s_more_trailers)) < 0) {
            goto error;
        }
        *last = !t;
    }
    else if ((r = same(kind, s_resp_pathsend)) != 0) {
        if (r < 0) {
            goto error;
        }
        *last = 1;
    }
    Py_DECREF(kind);
    return 0;
error:
    Py_XDECREF(kind);
    if (unreadable()) {
        PyErr_Clear();
        return 0;
    }
    return -1;
}

/* Read a message the server's receive returned. 0, or -1 to propagate. */
static int
core_read_received(Core *self, PyObject *m)
{
    PyObject *kind = item(m, s_type);
    int r;
    if (kind == NULL) {
        goto error;
    }
    if ((r = same(kind, s_http_request)) != 0) {
        if (r < 0) {
            goto error;
        }
        PyObject *body = get(m, s_body, empty_bytes);
        if (body == NULL) {
            goto error;
        }
        Py_ssize_t len = PyObject_Length(body);
        Py_DECREF(body);
        if (len < 0) {
            goto error;
        }
        self->req_bytes += len;
    }
    else if ((r = same(kind, s_http_disconnect)) != 0) {
        if (r < 0) {
            goto error;
        }
        if (self->end == NULL || self->end == Py_None) {
            self->disconnected = 1;
            self->plain = 0;
            if (self->status == NULL || self->status == Py_None) {
                self->status_unsent = 1;
            }
        }
    }
    Py_DECREF(kind);
    return 0;
error:
    Py_XDECREF(kind);
    if (unreadable()) {
        PyErr_Clear();
        return 0;
    }
    return -1;
}

/* ------------------------------------------------------------------ the forwarding awaitable */

enum { FWD_NEW, FWD_RUNNING, FWD_DONE };

typedef struct {
    PyObject_HEAD
    Core *ex;
    PyObject *message; /* send: the message to send; NULL for receive */
    PyObject *inner;   /* the server's awaitable (its iterator) while running */
    char receive;      /* 1: receive, 0: send */
    char state;
    char last;  /* send: the message is the response's last part */
    char start; /* send: the message is the status line */
} Fwd;

static PyTypeObject FwdType;

static int
fwd_traverse(Fwd *self, visitproc visit, void *arg)
{
    Py_VISIT(self->ex);
    Py_VISIT(self->message);
    Py_VISIT(self->inner);
    return 0;
}

static int
fwd_clear(Fwd *self)
{
    Py_CLEAR(self->ex);
    Py_CLEAR(self->message);
    Py_CLEAR(self->inner);
    return 0;
}

/* A few freed Forward objects kept for reuse (two are made per request): kept with a
 * reference count of 1, untracked and holding nothing, as float and tuple keep theirs. */
#define FWD_KEPT 8
static Fwd *fwd_kept[FWD_KEPT];
static int fwd_nkept;

static void
fwd_dealloc(Fwd *self)
{
    PyObject_GC_UnTrack(self);
    fwd_clear(self);
    if (fwd_nkept < FWD_KEPT) {
        Py_SET_REFCNT(self, 1);
        fwd_kept[fwd_nkept++] = self;
        return;
    }
    PyObject_GC_Del(self);
}

static PyObject *
fwd_new(Core *ex, PyObject *message, char receive)
{
    Fwd *self;
    if (fwd_nkept > 0) {
        self = fwd_kept[--fwd_nkept];
    }
    else if ((self = PyObject_GC_New(Fwd, &FwdType)) == NULL) {
        return NULL;
    }
    self->ex = (Core *)Py_NewRef(ex);
    self->message = Py_XNewRef(message);
    self->inner = NULL;
    self->receive = receive;
    self->state = FWD_NEW;
    self->last = 0;
    self->start = 0;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

/* What ``await obj`` iterates (a new reference), or NULL with an error set. */
static PyObject *
awaitable_iter(PyObject *obj)
{
    if (PyCoro_CheckExact(obj)) {
        return Py_NewRef(obj);
    }
    PyAsyncMethods *am = Py_TYPE(obj)->tp_as_async;
    if (am != NULL && am->am_await != NULL) {
        PyObject *it = am->am_await(obj);
        if (it == NULL) {
            return NULL;
        }
        if (PyCoro_CheckExact(it) || !PyIter_Check(it)) {
            PyErr_Format(PyExc_TypeError, "__await__() returned %s",
                         PyCoro_CheckExact(it) ? "a coroutine" : "non-iterator");
            Py_DECREF(it);
            return NULL;
        }
        return it;
    }
    PyErr_Format(PyExc_TypeError, "object %.100s can't be used in 'await' expression",
                 Py_TYPE(obj)->tp_name);
    return NULL;
}

/* An error ended the forwarding: the client is gone if the server's send raised OSError. */
static void
fwd_failed(Fwd *self)
{
    self->state = FWD_DONE;
    Py_CLEAR(self->inner);
    if (!self->receive && PyErr_ExceptionMatches(PyExc_OSError)) {
        core_gone(self->ex, self->start);
    }
}

/* The server's awaitable returned ``value`` (stolen); the result of the await, or NULL. */
static PyObject *
fwd_returned(Fwd *self, PyObject *value)
{
    self->state = FWD_DONE;
    Py_CLEAR(self->inner);
    if (self->receive) {
        if (core_read_received(self->ex, value) < 0) {
            Py_DECREF(value);
            return NULL;
        }
        return value;
    }
    if (self->last && core_ended(self->ex) < 0) {
        Py_DECREF(value);
        return NULL;
    }
    return value;
}

/* Start: read the message and call the server's send (or receive). 0, or -1 with an error. */
static int
fwd_start(Fwd *self)
{
    Core *ex = self->ex;
    PyObject *res;
    self->state = FWD_RUNNING;
    if (self->receive) {
        if (ex->receive_ == NULL) {
            PyErr_SetString(PyExc_TypeError, "'NoneType' object is not callable");
            goto error;
        }
        res = PyObject_CallNoArgs(ex->receive_);
    }
    else {
        if (core_read_sent(ex, self->message, &self->last, &self->start) < 0) {
            self->state = FWD_DONE;
            return -1;
        }
        if (ex->send_ == NULL) {
            PyErr_SetString(PyExc_TypeError, "'NoneType' object is not callable");
            goto error;
        }
        res = PyObject_CallOneArg(ex->send_, self->message);
    }
    if (res == NULL) {
        goto error;
    }
    self->inner = awaitable_iter(res);
    Py_DECREF(res);
    if (self->inner == NULL) {
        goto error;
    }
    Py_CLEAR(self->message);
    return 0;
error:
    fwd_failed(self);
    return -1;
}

static PySendResult
fwd_am_send(Fwd *self, PyObject *arg, PyObject **result)
{
    *result = NULL;
    if (self->state == FWD_DONE) {
        PyErr_SetString(PyExc_RuntimeError, "cannot reuse already awaited coroutine");
        return PYGEN_ERROR;
    }
    if (self->state == FWD_NEW && fwd_start(self) < 0) {
        return PYGEN_ERROR;
    }
    PyObject *value;
    PySendResult r = PyIter_Send(self->inner, arg, &value);
    if (r == PYGEN_NEXT) {
        *result = value;
        return PYGEN_NEXT;
    }
    if (r == PYGEN_RETURN) {
        *result = fwd_returned(self, value);
        return *result == NULL ? PYGEN_ERROR : PYGEN_RETURN;
    }
    fwd_failed(self);
    return PYGEN_ERROR;
}

/* Raise StopIteration(value) (value stolen); always NULL. */
static PyObject *
stop_with(PyObject *value)
{
    if (value == Py_None) {
        Py_DECREF(value);
        PyErr_SetNone(PyExc_StopIteration);
        return NULL;
    }
    PyObject *stop = PyObject_CallOneArg(PyExc_StopIteration, value);
    Py_DECREF(value);
    if (stop != NULL) {
        PyErr_SetObject(PyExc_StopIteration, stop);
        Py_DECREF(stop);
    }
    return NULL;
}

static PyObject *
fwd_iternext(Fwd *self)
{
    PyObject *result;
    PySendResult r = fwd_am_send(self, Py_None, &result);
    if (r == PYGEN_NEXT) {
        return result;
    }
    if (r == PYGEN_RETURN) {
        if (result == Py_None) {
            Py_DECREF(result);
            return NULL; /* StopIteration, value None */
        }
        return stop_with(result);
    }
    return NULL;
}

static PyObject *
fwd_send(Fwd *self, PyObject *arg)
{
    PyObject *result;
    PySendResult r = fwd_am_send(self, arg, &result);
    if (r == PYGEN_NEXT) {
        return result;
    }
    if (r == PYGEN_RETURN) {
        return stop_with(result);
    }
    return NULL;
}

/* Raise what throw(typ[, val[, tb]]) was given, here. */
static PyObject *
raise_thrown(PyObject *args)
{
    PyObject *typ = PyTuple_GET_ITEM(args, 0);
    PyObject *val = PyTuple_GET_SIZE(args) > 1 ? PyTuple_GET_ITEM(args, 1) : NULL;
    if (PyExceptionInstance_Check(typ)) {
        PyErr_SetObject((PyObject *)Py_TYPE(typ), typ);
    }
    else if (PyExceptionClass_Check(typ)) {
        PyErr_SetObject(typ, val == Py_None ? NULL : val);
    }
    else {
        PyErr_SetString(PyExc_TypeError,
                        "exceptions must be classes or instances deriving from BaseException");
    }
    return NULL;
}

static PyObject *
fwd_throw(Fwd *self, PyObject *args)
{
    if (PyTuple_GET_SIZE(args) < 1 || PyTuple_GET_SIZE(args) > 3) {
        PyErr_SetString(PyExc_TypeError, "throw expected 1 to 3 arguments");
        return NULL;
    }
    if (self->state != FWD_RUNNING) { /* not started, or over: it raises here */
        self->state = FWD_DONE;
        Py_CLEAR(self->message);
        return raise_thrown(args);
    }
    PyObject *throw = PyObject_GetAttr(self->inner, s_throw);
    if (throw == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
            fwd_failed(self);
            return NULL;
        }
        PyErr_Clear();
        raise_thrown(args);
        fwd_failed(self);
        return NULL;
    }
    PyObject *res = PyObject_Call(throw, args, NULL);
    Py_DECREF(throw);
    if (res != NULL) {
        return res; /* the server's awaitable yielded again */
    }
    if (PyErr_ExceptionMatches(PyExc_StopIteration)) { /* it returned */
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        PyObject *returned = value == NULL ? NULL : PyObject_GetAttr(value, s_value);
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        if (returned == NULL) {
            fwd_failed(self);
            return NULL;
        }
        PyObject *result = fwd_returned(self, returned);
        return result == NULL ? NULL : stop_with(result);
    }
    fwd_failed(self);
    return NULL;
}

static PyObject *
fwd_close(Fwd *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *inner = self->inner;
    self->inner = NULL;
    self->state = FWD_DONE;
    Py_CLEAR(self->message);
    if (inner == NULL) {
        Py_RETURN_NONE;
    }
    PyObject *close = PyObject_GetAttr(inner, s_close);
    Py_DECREF(inner);
    if (close == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
            return NULL;
        }
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    PyObject *res = PyObject_CallNoArgs(close);
    Py_DECREF(close);
    return res;
}

static PyObject *
fwd_await(Fwd *self)
{
    return Py_NewRef(self);
}

/* What the deadlock and stuck-task walkers follow: the server's awaitable, while running. */
static PyObject *
fwd_get_cr_await(Fwd *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(self->inner != NULL ? self->inner : Py_None);
}

static PyObject *
fwd_get_cr_running(Fwd *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(0);
}

static PyMethodDef fwd_methods[] = {
    {"send", (PyCFunction)fwd_send, METH_O, "Send a value into the server's awaitable."},
    {"throw", (PyCFunction)fwd_throw, METH_VARARGS, "Raise an exception in it."},
    {"close", (PyCFunction)fwd_close, METH_NOARGS, "Close it."},
    {NULL},
};

static PyGetSetDef fwd_getset[] = {
    {"cr_await", (getter)fwd_get_cr_await, NULL, "The server's awaitable, while running.", NULL},
    {"cr_running", (getter)fwd_get_cr_running, NULL, "Always False (never runs code).", NULL},
    {NULL},
};

static PyAsyncMethods fwd_as_async = {
    .am_await = (unaryfunc)fwd_await,
    .am_send = (sendfunc)fwd_am_send,
};

static PyTypeObject FwdType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "asyncwatch.asgi._fastexchange.Forward",
    .tp_doc = "The server's send or receive, awaited through asyncwatch's observation.",
    .tp_basicsize = sizeof(Fwd),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_traverse = (traverseproc)fwd_traverse,
    .tp_clear = (inquiry)fwd_clear,
    .tp_dealloc = (destructor)fwd_dealloc,
    .tp_as_async = &fwd_as_async,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)fwd_iternext,
    .tp_methods = fwd_methods,
    .tp_getset = fwd_getset,
};

static PyObject *
core_send(Core *self, PyObject *message)
{
    return fwd_new(self, message, 0);
}

static PyObject *
core_receive(Core *self, PyObject *Py_UNUSED(ignored))
{
    return fwd_new(self, NULL, 1);
}

static PyMethodDef core_methods[] = {
    {"send", (PyCFunction)core_send, METH_O,
     "The server's send, observed; the request ends when its last part is sent."},
    {"receive", (PyCFunction)core_receive, METH_NOARGS, "The server's receive, observed."},
    {"record", (PyCFunction)core_record, METH_O,
     "Record the request (once), ended at ``end``: the common request here, else "
     "``record_full``."},
    {"finish", (PyCFunction)core_finish, METH_NOARGS,
     "The app returned or raised: the common request here, else ``finish_full``."},
    {NULL},
};

#define M(name, type, field) {name, type, offsetof(Core, field), 0, NULL}
static PyMemberDef core_members[] = {
    M("obs", T_OBJECT, obs),
    M("scope", T_OBJECT, scope),
    M("_receive", T_OBJECT, receive_),
    M("_send", T_OBJECT, send_),
    M("shard", T_OBJECT, shard),
    M("method", T_OBJECT, method),
    M("root_path", T_OBJECT, root_path),
    M("status", T_OBJECT, status),
    M("end", T_OBJECT, end),
    M("slot", T_OBJECT, slot),
    M("route", T_OBJECT, route),
    M("token", T_OBJECT, token),
    M("started", T_DOUBLE, started),
    M("tasks", T_PYSSIZET, tasks),
    M("req_bytes", T_PYSSIZET, req_bytes),
    M("resp_bytes", T_PYSSIZET, resp_bytes),
    M("recorded", T_BOOL, recorded),
    M("plain", T_BOOL, plain),
    M("trailers", T_BOOL, trailers),
    M("disconnected", T_BOOL, disconnected),
    M("status_unsent", T_BOOL, status_unsent),
    M("finished", T_BOOL, finished),
    {NULL},
};
#undef M

static PyTypeObject CoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "asyncwatch.asgi._fastexchange.HttpCore",
    .tp_doc = "The fields and per-message work of one HTTP request (HttpExchange's base).",
    .tp_basicsize = sizeof(Core),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_traverse = (traverseproc)core_traverse,
    .tp_clear = (inquiry)core_clear,
    .tp_dealloc = (destructor)core_dealloc,
    .tp_methods = core_methods,
    .tp_members = core_members,
};

/* ------------------------------------------------------------------ module functions */

/* new_http(obs, scope, receive, send, method, root_path[, enter]): the exchange of one request,
 * counted in flight, its clock started; with ``enter`` true, also the value of REQUEST until
 * its ``finish``. */
static PyObject *
new_http(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6 && nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "new_http takes 6 or 7 arguments");
        return NULL;
    }
    int enter = 0;
    if (nargs == 7 && (enter = PyObject_IsTrue(args[6])) < 0) {
        return NULL;
    }
    if (exchange_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "new_http before bind()");
        return NULL;
    }
    PyObject *obs = args[0], *shard = NULL;
    unsigned long me = PyThread_get_thread_ident();
    /* The shard of the thread of this observer's last request: the common case, no lookup. */
    PyObject *last = field_get(obs, F_OBS_SHARD_THREAD);
    if (last == NULL) {
        PyErr_Clear();
    }
    else {
        int same_thread = PyLong_CheckExact(last) && PyLong_AsUnsignedLong(last) == me;
        Py_DECREF(last);
        if (PyErr_Occurred()) {
            PyErr_Clear();
        }
        else if (same_thread && (shard = field_get(obs, F_OBS_SHARD)) == NULL) {
            PyErr_Clear();
        }
        else if (shard == Py_None) {
            Py_CLEAR(shard);
        }
    }
    if (shard == NULL) {
        PyObject *ident = PyLong_FromUnsignedLong(me);
        if (ident == NULL) {
            return NULL;
        }
        PyObject *by_thread = field_get(obs, F_OBS_BY_THREAD);
        if (by_thread == NULL) {
            Py_DECREF(ident);
            return NULL;
        }
        if (PyDict_CheckExact(by_thread)) {
            shard = PyDict_GetItemWithError(by_thread, ident);
            Py_XINCREF(shard);
        }
        Py_DECREF(by_thread);
        if (shard == NULL && PyErr_Occurred()) {
            Py_DECREF(ident);
            return NULL;
        }
        if (shard == NULL) { /* this thread's first request: HttpStats.shard makes its shard */
            PyObject *stats = field_get(obs, F_OBS_STATS);
            if (stats == NULL) {
                Py_DECREF(ident);
                return NULL;
            }
            shard = PyObject_GetAttr(stats, s_shard);
            Py_DECREF(stats);
            if (shard == NULL) {
                Py_DECREF(ident);
                return NULL;
            }
        }
        if (field_set(obs, F_OBS_SHARD, shard) < 0
            || field_set(obs, F_OBS_SHARD_THREAD, ident) < 0) {
            PyErr_Clear(); /* an observer that keeps no last shard: looked up each time */
        }
        Py_DECREF(ident);
    }
    Core *self = (Core *)exchange_type->tp_alloc(exchange_type, 0);
    if (self == NULL) {
        Py_DECREF(shard);
        return NULL;
    }
    self->obs = Py_NewRef(obs);
    self->scope = Py_NewRef(args[1]);
    self->receive_ = Py_NewRef(args[2]);
    self->send_ = Py_NewRef(args[3]);
    self->method = Py_NewRef(args[4]);
    self->root_path = Py_NewRef(args[5]);
    self->shard = shard;
    self->plain = 1;
    PyObject *live = field_get(shard, F_LIVE);
    if (live == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    int rc;
    if (PySet_Check(live)) {
        rc = PySet_Add(live, (PyObject *)self);
    }
    else {
        PyObject *res = PyObject_CallMethod(live, "add", "O", (PyObject *)self);
        rc = res == NULL ? -1 : 0;
        Py_XDECREF(res);
    }
    Py_DECREF(live);
    PyObject *now = rc < 0 ? NULL : clock_now();
    if (now == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    self->started = PyFloat_AsDouble(now);
    Py_DECREF(now);
    if (self->started == -1.0 && PyErr_Occurred()) {
        Py_DECREF(self);
        return NULL;
    }
    if (enter) { /* the last step: nothing after it can fail */
        self->token = PyContextVar_Set(request_var, (PyObject *)self);
        if (self->token == NULL) {
            Py_DECREF(self);
            return NULL;
        }
    }
    return (PyObject *)self;
}

/* bind(cls, clock, fold_at, max_shortcuts, slot_class, shard_class, request_var): the
 * HttpExchange class new_http makes, the clock, FOLD_AT, MAX_SHORTCUTS, the classes of the
 * figures (RequestSlot) and of a shard (HttpShard), and REQUEST. */
static PyObject *
bind(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *cls, *clock, *var;
    PyTypeObject *slot_class, *shard_class;
    Py_ssize_t fold, shortcuts;
    if (!PyArg_ParseTuple(args, "OOnnO!O!O!:bind", &cls, &clock, &fold, &shortcuts,
                          &PyType_Type, &slot_class, &PyType_Type, &shard_class,
                          &PyContextVar_Type, &var)) {
        return NULL;
    }
    if (!PyType_Check(cls) || !PyType_IsSubtype((PyTypeObject *)cls, &CoreType)) {
        PyErr_SetString(PyExc_TypeError, "bind() takes a subclass of HttpCore");
        return NULL;
    }
    Py_XSETREF(exchange_type, (PyTypeObject *)Py_NewRef(cls));
    Py_XSETREF(clock_fn, Py_NewRef(clock));
    Py_XSETREF(request_var, Py_NewRef(var));
    fold_at = fold;
    max_shortcuts = shortcuts;
#if defined(__linux__)
    PyObject *time = PyImport_ImportModule("time");
    if (time == NULL) {
        return NULL;
    }
    PyObject *perf_counter = PyObject_GetAttrString(time, "perf_counter");
    Py_DECREF(time);
    if (perf_counter == NULL) {
        return NULL;
    }
    clock_inline = clock == perf_counter;
    Py_DECREF(perf_counter);
#endif
    for (int i = 0; i < F_OBS_BY_THREAD; i++) {
        Py_CLEAR(fields[i].type);
    }
    bind_field(F_ROUTE, slot_class, &s_route);
    bind_field(F_DURATIONS, slot_class, &s_durations);
    bind_field(F_REQUEST_SIZES, slot_class, &s_request_sizes);
    bind_field(F_RESPONSE_SIZES, slot_class, &s_response_sizes);
    bind_field(F_ZERO_TASKS, slot_class, &s_zero_tasks);
    bind_field(F_LIVE, shard_class, &s_live);
    bind_field(F_BY_ROUTE, shard_class, &s_by_route);
    bind_field(F_BY_ROUTE_OBJECT, shard_class, &s_by_route_object);
    for (int i = 0; i < F_OBS_BY_THREAD; i++) {
        Py_INCREF(fields[i].type);
    }
    Py_RETURN_NONE;
}

/* bind_observer(cls): the middleware's Observer class, whose by_thread and stats new_http
 * reads. */
static PyObject *
bind_observer(PyObject *Py_UNUSED(module), PyObject *cls)
{
    if (!PyType_Check(cls)) {
        PyErr_SetString(PyExc_TypeError, "bind_observer() takes a class");
        return NULL;
    }
    for (int i = F_OBS_BY_THREAD; i < F_COUNT; i++) {
        Py_CLEAR(fields[i].type);
    }
    bind_field(F_OBS_BY_THREAD, (PyTypeObject *)cls, &s_by_thread);
    bind_field(F_OBS_STATS, (PyTypeObject *)cls, &s_stats);
    bind_field(F_OBS_SHARD, (PyTypeObject *)cls, &s_last_shard);
    bind_field(F_OBS_SHARD_THREAD, (PyTypeObject *)cls, &s_last_thread);
    for (int i = F_OBS_BY_THREAD; i < F_COUNT; i++) {
        Py_INCREF(fields[i].type);
    }
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"new_http", (PyCFunction)(void (*)(void))new_http, METH_FASTCALL,
     "new_http(obs, scope, receive, send, method, root_path[, enter]): one request's "
     "exchange."},
    {"bind", bind, METH_VARARGS,
     "bind(cls, clock, fold_at, max_shortcuts, slot_class, shard_class, request_var)"},
    {"bind_observer", bind_observer, METH_O, "bind_observer(observer_class)"},
    {NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "asyncwatch.asgi._fastexchange",
    .m_doc = "The compiled twin of asyncwatch.asgi._pureexchange.",
    .m_size = -1,
    .m_methods = module_methods,
};

#define INTERN(var, text)                                 \
    do {                                                  \
        if ((var = PyUnicode_InternFromString(text)) == NULL) \
            return NULL;                                  \
    } while (0)

PyMODINIT_FUNC
PyInit__fastexchange(void)
{
    INTERN(s_type, "type");
    INTERN(s_body, "body");
    INTERN(s_more_body, "more_body");
    INTERN(s_status, "status");
    INTERN(s_trailers, "trailers");
    INTERN(s_more_trailers, "more_trailers");
    INTERN(s_http_request, "http.request");
    INTERN(s_http_disconnect, "http.disconnect");
    INTERN(s_resp_body, "http.response.body");
    INTERN(s_resp_start, "http.response.start");
    INTERN(s_resp_trailers, "http.response.trailers");
    INTERN(s_resp_pathsend, "http.response.pathsend");
    INTERN(s_record_full, "record_full");
    INTERN(s_finish_full, "finish_full");
    INTERN(s_fault, "fault");
    INTERN(s_asgi_request, "asgi_request");
    INTERN(s_get, "get");
    INTERN(s_stats, "stats");
    INTERN(s_shard, "shard");
    INTERN(s_live, "live");
    INTERN(s_route, "route");
    INTERN(s_path_format, "path_format");
    INTERN(s_root_path, "root_path");
    INTERN(s_scheme, "scheme");
    INTERN(s_http_version, "http_version");
    INTERN(s_fastapi, "fastapi");
    INTERN(s_by_route, "by_route");
    INTERN(s_durations, "durations");
    INTERN(s_request_sizes, "request_sizes");
    INTERN(s_response_sizes, "response_sizes");
    INTERN(s_fold, "fold");
    INTERN(s_zero_tasks, "zero_tasks");
    INTERN(s_throw, "throw");
    INTERN(s_close, "close");
    INTERN(s_value, "value");
    INTERN(s_by_route_object, "by_route_object");
    INTERN(s_by_thread, "by_thread");
    INTERN(s_last_shard, "last_shard");
    INTERN(s_last_thread, "last_thread");
    if ((empty_bytes = PyBytes_FromStringAndSize(NULL, 0)) == NULL
        || (one = PyLong_FromLong(1)) == NULL) {
        return NULL;
    }
    PyObject **names[F_COUNT] = {&s_route, &s_durations, &s_request_sizes, &s_response_sizes,
                                 &s_zero_tasks, &s_live, &s_by_route, &s_by_route_object,
                                 &s_by_thread, &s_stats, &s_last_shard, &s_last_thread};
    for (int i = 0; i < F_COUNT; i++) {
        fields[i].type = NULL;
        fields[i].offset = -1;
        fields[i].name = names[i];
    }
    if (PyType_Ready(&CoreType) < 0 || PyType_Ready(&FwdType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "HttpCore", (PyObject *)&CoreType) < 0
        || PyModule_AddObjectRef(m, "Forward", (PyObject *)&FwdType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
