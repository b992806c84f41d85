"""Child side of the code sandbox: confine this process, then play one of two roles.

Runs as `python -I -S -B _sandbox_launcher.py SPEC` (inside bubblewrap, or bare in weak
mode) with stdin a file holding its input. Roles:
- "program": runs the model-written program (then the data set's set-up code), sends the
  names it defined, then answers calls of its functions; values cross as literals only.
- "tests": runs the data set's tests against stand-ins for those names. It alone holds the
  verdict pipe and writes the pass mark ("P") after the tests returned; the program's
  process never sees that pipe, so nothing it does can produce a pass.

Order: rlimits, input read, interpreter hardening (weak mode), audit hook, then the role.
Imports only the standard library and its sibling modules, loaded by path.
"""

import builtins
import os
import resource
import sys
import types  # also: it reads a traceback's frame once, at import, which the hook then forbids

HERE = os.path.dirname(os.path.abspath(__file__))
STDLIB_DENY = frozenset({"antigravity", "this", "idlelib", "turtle", "turtledemo", "tkinter", "webbrowser", "pydoc"})


def _load(name):
    """A sibling module, by path: isolated mode puts no folder of ours on sys.path, and
    importlib.util would cost each process more start-up time than this."""
    path = os.path.join(HERE, name + ".py")
    module = types.ModuleType(name)
    module.__file__ = path
    with open(path, "rb") as f:
        code = compile(f.read(), path, "exec")
    sys.modules[name] = module
    exec(code, module.__dict__)
    return module


wire = _load("sandbox_wire")
hooks = _load("_sandbox_hook")
SPEC = wire.decode(sys.argv[1])


def _confine():
    for kind, value in ((resource.RLIMIT_AS, SPEC["memory_bytes"]), (resource.RLIMIT_CPU, SPEC["cpu_seconds"]),
                        (resource.RLIMIT_FSIZE, SPEC["file_bytes"]), (resource.RLIMIT_NOFILE, 64),
                        (resource.RLIMIT_CORE, 0),
                        # per user: 1 means no new processes, except for root (also root mapped to
                        # 65534 inside bubblewrap), whom the kernel exempts: there the seccomp filter
                        # and the hook refuse them
                        (resource.RLIMIT_NPROC, 1)):
        resource.setrlimit(kind, (value, value))
    source = b"".join(iter(lambda: os.read(0, 1 << 16), b""))
    os.close(0)
    sys.set_int_max_str_digits(0)
    for name in [m for m in sys.modules if m.split(".")[0] in hooks.BLOCKED_IMPORTS]:
        del sys.modules[name]
    if SPEC["weak"]:
        hooks.harden_weak()
    if SPEC["audit_hook"]:
        sys.addaudithook(hooks.make_hook(os.path.realpath(os.getcwd()), SPEC["read_roots"], SPEC["weak"],
                                         SPEC["max_entries"], untrusted=SPEC["role"] == "program"))
    return source


def _describe(e, filename=None, source=""):
    try:
        text = f"{type(e).__name__}: {e}"[:1000]
    except Exception:
        text = type(e).__name__
    tb, line = e.__traceback__, None
    while tb is not None:
        if filename and tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    if line is not None:
        lines = source.splitlines()
        text += f" ({filename} line {line}: {lines[line - 1].strip()[:200] if line <= len(lines) else ''})"
    return text


class _Channel:
    def __init__(self):
        self.inp = os.fdopen(SPEC["recv_fd"], "rb")
        self.out = os.fdopen(SPEC["send_fd"], "wb")

    def send(self, message):
        self.out.write(wire.encode(message))
        self.out.flush()

    def receive(self):
        return wire.read_message(self.inp)


# --- the program's process ---------------------------------------------------------------

def run_program(source):
    program, setup = wire.decode(source)
    channel = _Channel()
    channel.send(("ready",))
    ns = {"__name__": "__main__", "__builtins__": builtins}
    refs = []
    try:
        exec(compile(program, "program.py", "exec"), ns)
        if setup:
            exec(compile(setup, "setup.py", "exec"), ns)
        names = [_entry(name, value, refs) for name, value in list(ns.items())
                 if type(name) is str and not name.startswith("__")]
    except BaseException as e:  # SystemExit included: the program did not run to its end
        print(_describe(e), file=sys.stderr, flush=True)
        channel.send(("error", type(e).__name__))
        os._exit(1)
    channel.send(("names", names))
    while True:
        try:
            request = channel.receive()
        except EOFError:
            os._exit(0)
        try:
            channel.send(_answer(request, ns, refs))
        except ValueError:  # a result too long for one message
            channel.send(("e", "ValueError", "the result is too long to send"))


def _entry(name, value, refs):
    if type(value) is types.ModuleType:
        return (name, "module", str(getattr(value, "__name__", "")))
    if callable(value):
        return (name, "call", None)
    value = wire.to_plain(value)
    if wire.is_plain(value) and len(repr(value)) < wire.MAX_LINE // 16:
        return (name, "value", value)
    refs.append(value)
    return (name, "ref", len(refs) - 1)


def _answer(request, ns, refs):
    try:
        _, callee, args, kwargs = request
        fn = ns[callee] if type(callee) is str else refs[callee]
        result = fn(*[_unpack(a, ns, refs) for a in args], **{k: _unpack(v, ns, refs) for k, v in kwargs.items()})
        result = wire.to_plain(result)
        if wire.is_plain(result):
            return ("v", result)
        refs.append(result)
        return ("r", len(refs) - 1)
    except BaseException as e:
        try:
            text = str(e)[:300]
        except BaseException:
            text = ""
        return ("e", type(e).__name__, text)


def _unpack(arg, ns, refs):
    tag, value = arg
    return {"v": lambda: value, "r": lambda: refs[value], "f": lambda: ns[value]}[tag]()


# --- the tests' process ------------------------------------------------------------------

class _Call:
    """Stands for a function (or class) of the program: a call runs there."""

    def __init__(self, channel, callee, label):
        self._channel, self._callee, self._label = channel, callee, label

    def __call__(self, *args, **kwargs):
        self._channel.send(("call", self._callee, [_pack(a) for a in args], {k: _pack(v) for k, v in kwargs.items()}))
        reply = self._channel.receive()
        if type(reply) is tuple and len(reply) == 2 and reply[0] == "v":
            return reply[1]
        if type(reply) is tuple and len(reply) == 2 and reply[0] == "r" and type(reply[1]) is int:
            return _Call(self._channel, reply[1], f"object returned by {self._label}")
        if type(reply) is tuple and len(reply) == 3 and reply[0] == "e" and type(reply[1]) is str:
            raise _exception(reply[1], str(reply[2]))
        raise RuntimeError(f"the program sent a malformed reply to a call of {self._label}")

    def __repr__(self):
        return f"<{self._label} of the program>"


def _pack(value):
    if type(value) is _Call:
        return ("f" if type(value._callee) is str else "r", value._callee)
    if wire.is_plain(value):
        return ("v", value)
    raise TypeError(f"a {type(value).__name__} cannot be passed to the program (literals only)")


def _exception(name, text):
    cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(text)
        except Exception:
            pass
    return RuntimeError(f"{name}: {text}")


def run_tests(source):
    verdict = SPEC["verdict_fd"]
    os.write(verdict, b"S")  # confined and running: a later failure is the program's
    channel = _Channel()
    try:
        started = channel.receive() == ("ready",)
    except (EOFError, ValueError):
        started = False
    if not started:
        os.write(verdict, b"X")
        os._exit(3)
    os.write(verdict, b"R")
    tests = source.decode("utf-8")
    try:
        ns = {"__name__": "__main__", "__builtins__": builtins}
        ns.update(_stand_ins(channel))
        exec(compile(tests, "tests.py", "exec"), ns)
    except BaseException as e:
        print(_describe(e, "tests.py", tests), file=sys.stderr, flush=True)
        os._exit(1)
    os.write(verdict, b"P")
    os._exit(0)


def _stand_ins(channel):
    try:
        message = channel.receive()
    except EOFError:
        raise RuntimeError("the program ended before the tests (os._exit or a crash)") from None
    if type(message) is tuple and message[:1] == ("error",):
        raise RuntimeError(f"the program raised {str(message[1:2])[1:-2]} before the tests")
    if type(message) is not tuple or len(message) != 2 or message[0] != "names" or type(message[1]) is not list:
        raise RuntimeError("the program sent a malformed list of names")
    ns = {}
    for entry in message[1]:
        if type(entry) is not tuple or len(entry) != 3 or type(entry[0]) is not str or entry[0].startswith("__"):
            raise RuntimeError("the program sent a malformed list of names")
        name, kind, payload = entry
        if kind == "call":
            ns[name] = _Call(channel, name, f"function {name}")
        elif kind == "value":
            ns[name] = payload
        elif kind == "ref" and type(payload) is int:
            ns[name] = _Call(channel, payload, f"object {name}")
        elif kind == "module" and type(payload) is str and _stdlib(payload):
            try:  # the tests may use a module the program imported (MBPP: math.isclose)
                ns[name] = __import__(payload, fromlist=["_"])
            except Exception:
                pass
    return ns


def _stdlib(name):
    top = name.split(".")[0]
    return top in sys.stdlib_module_names and top not in STDLIB_DENY and not top.startswith("_")


def main():
    source = _confine()
    (run_program if SPEC["role"] == "program" else run_tests)(source)


main()
