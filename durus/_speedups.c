/* The optional C accelerator of durus: the steps every object takes on its
 * way into a connection, which a cold load of a large tree takes hundreds of
 * thousands of times, and the question a pickler asks of every object in a
 * state it writes (is this a persistent reference?).
 *
 * Each function or type here stands in for a pure-Python one, which its
 * comment names, and does exactly what that does; durus.persistent and
 * durus.serialize pick one or the other at import (see durus/speedups.py),
 * and the tests run against both.  Nothing here knows more of durus than
 * those functions do: the tables they read are handed over by configure().
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>

/* What configure() hands over from durus.persistent. */
static PyObject *real_classes;        /* dict: tracking class -> real class */
static PyObject *tracking_classes;    /* dict: class -> tracking class */
static PyObject *plain_new_classes;   /* set: classes whose __new__ is PersistentObject's */
static PyObject *make_tracking_class; /* tracking_class(cls), for a class met first */
static PyObject *ghost_status;        /* GHOST */

static PyObject *empty_tuple;
static PyObject *zero;
static PyObject *str_p_oid, *str_p_connection, *str_p_status, *str_p_serial;
static PyObject *str_new, *str_add, *str_get, *str_class, *str_note_access, *str_p_load_state;

static int
check_arguments(const char *name, Py_ssize_t nargs, Py_ssize_t expected)
{
    if (nargs == expected)
        return 0;
    PyErr_Format(PyExc_TypeError, "%s() takes %zd arguments (%zd given)", name, expected, nargs);
    return -1;
}

static PyObject *
configure(PyObject *module, PyObject *args)
{
    PyObject *reals, *trackers, *plain, *make, *ghost;
    if (!PyArg_ParseTuple(args, "O!O!O!OO:configure", &PyDict_Type, &reals, &PyDict_Type, &trackers,
                          &PySet_Type, &plain, &make, &ghost))
        return NULL;
    Py_INCREF(reals);
    Py_XSETREF(real_classes, reals);
    Py_INCREF(trackers);
    Py_XSETREF(tracking_classes, trackers);
    Py_INCREF(plain);
    Py_XSETREF(plain_new_classes, plain);
    Py_INCREF(make);
    Py_XSETREF(make_tracking_class, make);
    Py_INCREF(ghost);
    Py_XSETREF(ghost_status, ghost);
    Py_RETURN_NONE;
}

static int
check_configured(void)
{
    if (real_classes == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "durus._speedups is used before configure()");
        return -1;
    }
    return 0;
}

/* new_ghost(cls, oid, connection): as durus.persistent.new_ghost. */
static PyObject *
new_ghost_of(PyObject *cls, PyObject *oid, PyObject *connection)
{
    PyObject *tracker, *ghost;
    int plain;

    if (check_configured() < 0)
        return NULL;
    tracker = PyDict_GetItemWithError(tracking_classes, cls);
    if (tracker != NULL)
        Py_INCREF(tracker);
    else if (PyErr_Occurred() || (tracker = PyObject_CallOneArg(make_tracking_class, cls)) == NULL)
        return NULL;
    plain = PySet_Contains(plain_new_classes, cls);
    if (plain < 0) {
        Py_DECREF(tracker);
        return NULL;
    }
    if (plain) {
        if (!PyType_Check(tracker)) {
            PyErr_SetString(PyExc_TypeError, "a tracking class must be a class");
            Py_DECREF(tracker);
            return NULL;
        }
        ghost = PyBaseObject_Type.tp_new((PyTypeObject *)tracker, empty_tuple, NULL);
        if (ghost != NULL && PyObject_GenericSetAttr(ghost, str_p_serial, zero) < 0)
            Py_CLEAR(ghost);
    }
    else {
        ghost = PyObject_CallMethodOneArg(cls, str_new, tracker);
    }
    Py_DECREF(tracker);
    if (ghost == NULL)
        return NULL;
    if (PyObject_GenericSetAttr(ghost, str_p_oid, oid) < 0
        || PyObject_GenericSetAttr(ghost, str_p_connection, connection) < 0
        || PyObject_GenericSetAttr(ghost, str_p_status, ghost_status) < 0) {
        Py_DECREF(ghost);
        return NULL;
    }
    return ghost;
}

static PyObject *
new_ghost(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (check_arguments("new_ghost", nargs, 3) < 0)
        return NULL;
    return new_ghost_of(args[0], args[1], args[2]);
}

/* refill_dict(instance_dict, state): as durus.persistent._refill_dict. */
static PyObject *
refill_dict(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *target, *state, *items, *key, *value;
    Py_ssize_t i, position = 0;
    int failed = 0;

    if (check_arguments("refill_dict", nargs, 2) < 0)
        return NULL;
    target = args[0];
    state = args[1];
    if (!PyDict_Check(target)) {
        PyErr_SetString(PyExc_TypeError, "refill_dict() needs an instance dict");
        return NULL;
    }
    PyDict_Clear(target);
    if (PyDict_CheckExact(state)) {
        while (!failed && PyDict_Next(state, &position, &key, &value)) {
            Py_INCREF(key);
            Py_INCREF(value);
            if (PyUnicode_CheckExact(key))
                PyUnicode_InternInPlace(&key);
            failed = PyDict_SetItem(target, key, value) < 0;
            Py_DECREF(key);
            Py_DECREF(value);
        }
        if (failed)
            return NULL;
        Py_RETURN_NONE;
    }
    /* Some other mapping: its items(), as the Python version takes them. */
    items = PyMapping_Items(state);
    if (items == NULL)
        return NULL;
    for (i = 0; !failed && i < PyList_GET_SIZE(items); i++) {
        PyObject *pair = PyList_GET_ITEM(items, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "a state's items() must be pairs");
            failed = 1;
            break;
        }
        key = PyTuple_GET_ITEM(pair, 0);
        Py_INCREF(key);
        if (PyUnicode_CheckExact(key))
            PyUnicode_InternInPlace(&key);
        failed = PyDict_SetItem(target, key, PyTuple_GET_ITEM(pair, 1)) < 0;
        Py_DECREF(key);
    }
    Py_DECREF(items);
    if (failed)
        return NULL;
    Py_RETURN_NONE;
}

/* PersistentLoader(connection, cache): a callable for an unpickler's
 * persistent_load, as durus.serialize's Python one: an (oid, class) id
 * becomes the connection's object for oid if it has one of that class,
 * else a new ghost, added to the cache; any other id is looked up with
 * connection.get().
 */
typedef struct {
    PyObject_HEAD
    PyObject *connection;
    PyObject *cache;
    PyObject *objects; /* cache.objects */
    vectorcallfunc vectorcall;
} PersistentLoader;

static PyObject *
loader_instance(PersistentLoader *self, PyObject *oid, PyObject *cls)
{
    PyObject *obj, *ghost, *added;
    if (check_configured() < 0)
        return NULL;
    obj = PyDict_GetItemWithError(self->objects, oid);
    if (obj != NULL) {
        PyObject *type = (PyObject *)Py_TYPE(obj);
        PyObject *real = PyDict_GetItemWithError(real_classes, type);
        if (real == NULL) {
            if (PyErr_Occurred())
                return NULL;
            real = type;
        }
        if (real == cls)
            return Py_NewRef(obj);
    }
    else if (PyErr_Occurred()) {
        return NULL;
    }
    ghost = new_ghost_of(cls, oid, self->connection);
    if (ghost == NULL)
        return NULL;
    added = PyObject_CallMethodOneArg(self->cache, str_add, ghost);
    if (added == NULL) {
        Py_DECREF(ghost);
        return NULL;
    }
    Py_DECREF(added);
    return ghost;
}

static PyObject *
loader_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    PersistentLoader *self = (PersistentLoader *)callable;
    PyObject *pid;
    if (kwnames != NULL && PyTuple_GET_SIZE(kwnames)) {
        PyErr_SetString(PyExc_TypeError, "persistent_load() takes no keyword arguments");
        return NULL;
    }
    if (PyVectorcall_NARGS(nargsf) != 1) {
        PyErr_SetString(PyExc_TypeError, "persistent_load() takes one argument");
        return NULL;
    }
    pid = args[0];
    if (PyTuple_CheckExact(pid)) {
        if (PyTuple_GET_SIZE(pid) != 2) {
            PyErr_SetString(PyExc_ValueError, "a persistent id must be (oid, class)");
            return NULL;
        }
        return loader_instance(self, PyTuple_GET_ITEM(pid, 0), PyTuple_GET_ITEM(pid, 1));
    }
    return PyObject_CallMethodOneArg(self->connection, str_get, pid);
}

static PyObject *
loader_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *connection, *cache, *objects;
    PersistentLoader *self;
    if (!PyArg_ParseTuple(args, "OO:PersistentLoader", &connection, &cache))
        return NULL;
    objects = PyObject_GetAttrString(cache, "objects");
    if (objects == NULL)
        return NULL;
    if (!PyDict_Check(objects)) {
        PyErr_SetString(PyExc_TypeError, "cache.objects must be a dict");
        Py_DECREF(objects);
        return NULL;
    }
    self = (PersistentLoader *)type->tp_alloc(type, 0);
    if (self == NULL) {
        Py_DECREF(objects);
        return NULL;
    }
    self->connection = Py_NewRef(connection);
    self->cache = Py_NewRef(cache);
    self->objects = objects;
    self->vectorcall = loader_vectorcall;
    return (PyObject *)self;
}

static int
loader_traverse(PersistentLoader *self, visitproc visit, void *arg)
{
    Py_VISIT(self->connection);
    Py_VISIT(self->cache);
    Py_VISIT(self->objects);
    return 0;
}

static int
loader_clear(PersistentLoader *self)
{
    Py_CLEAR(self->connection);
    Py_CLEAR(self->cache);
    Py_CLEAR(self->objects);
    return 0;
}

static void
loader_dealloc(PersistentLoader *self)
{
    PyObject_GC_UnTrack(self);
    loader_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject PersistentLoaderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "durus._speedups.PersistentLoader",
    .tp_basicsize = sizeof(PersistentLoader),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "persistent_load for a connection's unpickler: (oid, class) -> object",
    .tp_new = loader_new,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(PersistentLoader, vectorcall),
    .tp_traverse = (traverseproc)loader_traverse,
    .tp_clear = (inquiry)loader_clear,
    .tp_dealloc = (destructor)loader_dealloc,
};


/* PersistentIdentifier(reference, base, connection, refs): a callable for a
 * pickler's persistent_id, as durus.serialize's Python one: an instance of
 * base (a persistent object) becomes reference(obj), its (oid, class) id;
 * anything else None, to be pickled by value.  The pickler asks of every
 * object in a state, atoms included.
 *
 * For an object already stored through connection, what reference() does
 * is done here: its oid goes into refs, and the id is made.  So it is for a
 * new object (no oid) when new_oid and new_objects are given: it is named
 * with new_oid(), given connection, and appended to new_objects, as
 * reference() would (a build names a hundred thousand).  Anything else (one
 * of another connection) goes to reference().
 */
typedef struct {
    PyObject_HEAD
    PyObject *reference;
    PyObject *base;
    PyObject *connection;
    PyObject *refs;
    PyObject *new_oid;      /* NULL: new objects go to reference() */
    PyObject *new_objects;
    vectorcallfunc vectorcall;
} PersistentIdentifier;

/* Name the new object obj as reference() does: a new reference to its oid. */
static PyObject *
name_new_object(PersistentIdentifier *self, PyObject *obj)
{
    PyObject *oid = PyObject_CallNoArgs(self->new_oid);
    if (oid == NULL)
        return NULL;
    if (PyObject_GenericSetAttr(obj, str_p_oid, oid) < 0
        || PyObject_GenericSetAttr(obj, str_p_connection, self->connection) < 0
        || PyList_Append(self->new_objects, obj) < 0) {
        Py_DECREF(oid);
        return NULL;
    }
    return oid;
}

static PyObject *
stored_reference(PersistentIdentifier *self, PyObject *obj)
{
    PyObject *oid, *connection, *type, *cls, *id;
    oid = PyObject_GenericGetAttr(obj, str_p_oid);
    if (oid == NULL)
        return NULL;
    if (oid == Py_None && self->new_oid != NULL) {
        Py_DECREF(oid);
        oid = name_new_object(self, obj);
        if (oid == NULL)
            return NULL;
        connection = Py_NewRef(self->connection);
    }
    else
        connection = oid == Py_None ? NULL : PyObject_GenericGetAttr(obj, str_p_connection);
    if (connection == NULL) {
        Py_DECREF(oid);
        if (PyErr_Occurred())
            return NULL;
        return PyObject_CallOneArg(self->reference, obj);
    }
    Py_DECREF(connection);
    if (connection != self->connection) {
        Py_DECREF(oid);
        return PyObject_CallOneArg(self->reference, obj);
    }
    if (PySet_Add(self->refs, oid) < 0) {
        Py_DECREF(oid);
        return NULL;
    }
    type = (PyObject *)Py_TYPE(obj);
    cls = PyDict_GetItemWithError(real_classes, type);
    if (cls == NULL) {
        if (PyErr_Occurred()) {
            Py_DECREF(oid);
            return NULL;
        }
        cls = type;
    }
    id = PyTuple_Pack(2, oid, cls);
    Py_DECREF(oid);
    return id;
}

static PyObject *
identifier_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    PersistentIdentifier *self = (PersistentIdentifier *)callable;
    int persistent;
    if ((kwnames != NULL && PyTuple_GET_SIZE(kwnames)) || PyVectorcall_NARGS(nargsf) != 1) {
        PyErr_SetString(PyExc_TypeError, "persistent_id() takes one argument");
        return NULL;
    }
    persistent = PyObject_IsInstance(args[0], self->base);
    if (persistent < 0)
        return NULL;
    if (!persistent)
        Py_RETURN_NONE;
    return stored_reference(self, args[0]);
}

static PyObject *
identifier_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *reference, *base, *connection, *refs, *new_oid = NULL, *new_objects = NULL;
    PersistentIdentifier *self;
    if (check_configured() < 0)
        return NULL;
    if (!PyArg_ParseTuple(args, "OO!OO!|OO!:PersistentIdentifier", &reference, &PyType_Type, &base, &connection,
                          &PySet_Type, &refs, &new_oid, &PyList_Type, &new_objects))
        return NULL;
    if ((new_oid == NULL) != (new_objects == NULL)) {
        PyErr_SetString(PyExc_TypeError, "PersistentIdentifier: new_oid and new_objects go together");
        return NULL;
    }
    self = (PersistentIdentifier *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->reference = Py_NewRef(reference);
    self->base = Py_NewRef(base);
    self->connection = Py_NewRef(connection);
    self->refs = Py_NewRef(refs);
    self->new_oid = Py_XNewRef(new_oid);
    self->new_objects = Py_XNewRef(new_objects);
    self->vectorcall = identifier_vectorcall;
    return (PyObject *)self;
}

static int
identifier_traverse(PersistentIdentifier *self, visitproc visit, void *arg)
{
    Py_VISIT(self->reference);
    Py_VISIT(self->base);
    Py_VISIT(self->connection);
    Py_VISIT(self->refs);
    Py_VISIT(self->new_oid);
    Py_VISIT(self->new_objects);
    return 0;
}

static int
identifier_clear(PersistentIdentifier *self)
{
    Py_CLEAR(self->reference);
    Py_CLEAR(self->base);
    Py_CLEAR(self->connection);
    Py_CLEAR(self->refs);
    Py_CLEAR(self->new_oid);
    Py_CLEAR(self->new_objects);
    return 0;
}

static void
identifier_dealloc(PersistentIdentifier *self)
{
    PyObject_GC_UnTrack(self);
    identifier_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject PersistentIdentifierType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "durus._speedups.PersistentIdentifier",
    .tp_basicsize = sizeof(PersistentIdentifier),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "persistent_id for a connection's pickler: persistent object -> (oid, class)",
    .tp_new = identifier_new,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(PersistentIdentifier, vectorcall),
    .tp_traverse = (traverseproc)identifier_traverse,
    .tp_clear = (inquiry)identifier_clear,
    .tp_dealloc = (destructor)identifier_dealloc,
};

/* first_use(obj): as durus.persistent._first_use: move obj to its real
 * class, tell its connection, load it if it is a ghost (moving it back to
 * its tracking class if that fails).
 */
static int
first_use_of(PyObject *obj)
{
    PyObject *tracker = (PyObject *)Py_TYPE(obj);
    PyObject *cls, *connection, *status, *result;
    int ghost;

    if (check_configured() < 0)
        return -1;
    cls = PyDict_GetItemWithError(real_classes, tracker);
    if (cls == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetObject(PyExc_KeyError, tracker);
        return -1;
    }
    Py_INCREF(tracker);
    if (PyObject_GenericSetAttr(obj, str_class, cls) < 0)
        goto failed;
    connection = PyObject_GenericGetAttr(obj, str_p_connection);
    if (connection == NULL)
        goto failed;
    if (connection != Py_None) {
        result = PyObject_CallMethodOneArg(connection, str_note_access, obj);
        Py_DECREF(connection);
        if (result == NULL)
            goto failed;
        Py_DECREF(result);
    }
    else {
        Py_DECREF(connection);
    }
    status = PyObject_GenericGetAttr(obj, str_p_status);
    if (status == NULL)
        goto failed;
    ghost = PyObject_RichCompareBool(status, ghost_status, Py_EQ);
    Py_DECREF(status);
    if (ghost < 0)
        goto failed;
    if (ghost) {
        result = PyObject_CallMethodNoArgs(obj, str_p_load_state);
        if (result == NULL) {
            PyObject *type, *value, *traceback;
            PyErr_Fetch(&type, &value, &traceback);
            if (PyObject_GenericSetAttr(obj, str_class, tracker) < 0) {
                Py_XDECREF(type);
                Py_XDECREF(value);
                Py_XDECREF(traceback);
            }
            else {
                PyErr_Restore(type, value, traceback);
            }
            goto failed;
        }
        Py_DECREF(result);
    }
    Py_DECREF(tracker);
    return 0;
failed:
    Py_DECREF(tracker);
    return -1;
}

static PyObject *
first_use(PyObject *module, PyObject *obj)
{
    if (first_use_of(obj) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* Whether an attribute name is one of the _p_ names a tracking class
 * passes straight through. */
static int
is_p_name(PyObject *name)
{
    return PyUnicode_Check(name) && PyUnicode_GET_LENGTH(name) >= 3
        && PyUnicode_READ_CHAR(name, 0) == '_' && PyUnicode_READ_CHAR(name, 1) == 'p'
        && PyUnicode_READ_CHAR(name, 2) == '_';
}

/* The attribute read hook of a tracking class, as _first_use_getattribute in
 * durus.persistent.  (Its write hooks stay in Python: object.__setattr__,
 * which durus calls on tracked objects, refuses a class whose C-level
 * setattro is not object's.) */
static PyObject *
first_use_getattro(PyObject *self, PyObject *name)
{
    if (!PyUnicode_Check(name) || is_p_name(name))
        return PyObject_GenericGetAttr(self, name);
    if (PyUnicode_CompareWithASCIIString(name, "__class__") == 0) {
        PyObject *cls = PyDict_GetItemWithError(real_classes, (PyObject *)Py_TYPE(self));
        if (cls == NULL && !PyErr_Occurred())
            PyErr_SetObject(PyExc_KeyError, (PyObject *)Py_TYPE(self));
        return Py_XNewRef(cls);
    }
    if (first_use_of(self) < 0)
        return NULL;
    return PyObject_GetAttr(self, name);
}

/* install_hooks(tracker): give a new tracking class the read hook above in
 * place of the Python one it names (which it falls back on should its
 * slots ever be recomputed, as when a class it derives from is given a new
 * __getattribute__).  A class with a __getattr__ keeps the Python hook, as
 * only Python's slot calls __getattr__ when __getattribute__ fails. */
static PyObject *
install_hooks(PyObject *module, PyObject *tracker)
{
    PyTypeObject *type;
    if (check_configured() < 0)
        return NULL;
    if (!PyType_Check(tracker) || !(((PyTypeObject *)tracker)->tp_flags & Py_TPFLAGS_HEAPTYPE)) {
        PyErr_SetString(PyExc_TypeError, "install_hooks() needs a tracking class");
        return NULL;
    }
    type = (PyTypeObject *)tracker;
    if (PyObject_HasAttrString(tracker, "__getattr__"))
        Py_RETURN_NONE;
    type->tp_getattro = first_use_getattro;
    PyType_Modified(type);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"configure", configure, METH_VARARGS,
     "configure(real_classes, tracking_classes, plain_new_classes, tracking_class, GHOST)"},
    {"new_ghost", (PyCFunction)(void (*)(void))new_ghost, METH_FASTCALL, "new_ghost(cls, oid, connection)"},
    {"first_use", first_use, METH_O, "first_use(obj)"},
    {"install_hooks", install_hooks, METH_O, "install_hooks(tracking_class)"},
    {"refill_dict", (PyCFunction)(void (*)(void))refill_dict, METH_FASTCALL,
     "refill_dict(instance_dict, state)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "durus._speedups",
    .m_doc = "The C accelerator of durus (optional; see durus/speedups.py).",
    .m_size = -1,
    .m_methods = methods,
};

static int
intern_names(void)
{
    return (str_p_oid = PyUnicode_InternFromString("_p_oid")) == NULL
        || (str_p_connection = PyUnicode_InternFromString("_p_connection")) == NULL
        || (str_p_status = PyUnicode_InternFromString("_p_status")) == NULL
        || (str_p_serial = PyUnicode_InternFromString("_p_serial")) == NULL
        || (str_new = PyUnicode_InternFromString("__new__")) == NULL
        || (str_add = PyUnicode_InternFromString("add")) == NULL
        || (str_get = PyUnicode_InternFromString("get")) == NULL
        || (str_class = PyUnicode_InternFromString("__class__")) == NULL
        || (str_note_access = PyUnicode_InternFromString("note_access")) == NULL
        || (str_p_load_state = PyUnicode_InternFromString("_p_load_state")) == NULL ? -1 : 0;
}

PyMODINIT_FUNC
PyInit__speedups(void)
{
    PyObject *module;
    if (intern_names() < 0 || (empty_tuple = PyTuple_New(0)) == NULL || (zero = PyLong_FromLong(0)) == NULL)
        return NULL;
    if (PyType_Ready(&PersistentLoaderType) < 0 || PyType_Ready(&PersistentIdentifierType) < 0)
        return NULL;
    module = PyModule_Create(&module_def);
    if (module == NULL)
        return NULL;
    if (PyModule_AddObjectRef(module, "PersistentLoader", (PyObject *)&PersistentLoaderType) < 0
        || PyModule_AddObjectRef(module, "PersistentIdentifier", (PyObject *)&PersistentIdentifierType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
