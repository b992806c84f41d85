"""Messages between the program process and the test process of the code sandbox.

One message per line, written as a Python literal (`repr`) and read back by a small
evaluator over the parsed syntax tree that accepts only literals: tuples, lists, dicts,
sets, frozensets, str, bytes, numbers (nan and inf included), bools and None. Nothing the
other side sends can run code or build an object with behaviour of its own.

Imports only the standard library: the sandbox loads this file by path.
"""

import _ast as ast  # the node classes without the `ast` module's imports: each process starts faster

MAX_LINE = 4 << 20  # bytes of one message
MAX_DEPTH = 64
_SCALARS = (str, bytes, int, float, complex, bool, type(None))
_CONTAINERS = (list, tuple, set, frozenset)
_NAMED = {"nan": float("nan"), "inf": float("inf")}
_DICTS = ("Counter", "OrderedDict", "defaultdict")


def is_plain(value, depth=0):
    """Whether `value` is built from exact literal types only (its repr reads back as itself)."""
    kind = type(value)
    if kind in _SCALARS:
        return True
    if depth >= MAX_DEPTH:
        return False
    if kind in _CONTAINERS:
        return all(is_plain(v, depth + 1) for v in value)
    if kind is dict:
        return all(is_plain(k, depth + 1) and is_plain(v, depth + 1) for k, v in value.items())
    return False


def to_plain(value, depth=0):
    """`value` with the standard library's dict and tuple kinds whose equality with a dict or
    tuple is that of one (Counter, OrderedDict, defaultdict, named tuples) made plain."""
    kind = type(value)
    if kind in _SCALARS or depth >= MAX_DEPTH:
        return value
    if kind in _CONTAINERS:
        return kind(to_plain(v, depth + 1) for v in value)
    if kind is dict or isinstance(value, dict) and kind.__module__ == "collections" and kind.__name__ in _DICTS:
        return {to_plain(k, depth + 1): to_plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(kind, "_fields"):
        return tuple(to_plain(v, depth + 1) for v in value)
    return value


def encode(message):
    text = repr(message)
    if len(text) > MAX_LINE:
        raise ValueError(f"message of {len(text)} characters (at most {MAX_LINE})")
    return text.encode("utf-8", "backslashreplace") + b"\n"


def decode(line):
    """The value written by `encode`; ValueError for anything but a literal."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", "strict")
    try:
        tree = compile(line.strip(), "<message>", "eval", ast.PyCF_ONLY_AST)
    except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
        raise ValueError(f"not a literal ({type(e).__name__})") from None
    try:
        return _value(tree.body, 0)
    except (TypeError, RecursionError) as e:  # an unhashable key, say
        raise ValueError(f"not a literal ({type(e).__name__})") from None


def _value(node, depth):
    if depth > MAX_DEPTH:
        raise ValueError("nested too deeply")
    kind = type(node)
    if kind is ast.Constant:
        if type(node.value) not in _SCALARS:
            raise ValueError(f"constant of type {type(node.value).__name__}")
        return node.value
    if kind is ast.Name and node.id in _NAMED:
        return _NAMED[node.id]
    if kind is ast.UnaryOp and type(node.op) in (ast.USub, ast.UAdd):
        operand = _value(node.operand, depth + 1)
        if type(operand) not in (int, float, complex):
            raise ValueError("sign on a non-number")
        return -operand if type(node.op) is ast.USub else operand
    if kind is ast.BinOp and type(node.op) in (ast.Add, ast.Sub):  # complex: (1+2j), (nan-1j)
        left, right = _value(node.left, depth + 1), _value(node.right, depth + 1)
        if type(left) not in (int, float) or type(right) is not complex:
            raise ValueError("arithmetic beyond a complex literal")
        return left + right if type(node.op) is ast.Add else left - right
    if kind in (ast.Tuple, ast.List, ast.Set):
        items = [_value(e, depth + 1) for e in node.elts]
        return {ast.Tuple: tuple, ast.List: list, ast.Set: set}[kind](items)
    if kind is ast.Dict:
        if any(k is None for k in node.keys):
            raise ValueError("** in a dict literal")
        return {_value(k, depth + 1): _value(v, depth + 1) for k, v in zip(node.keys, node.values)}
    if kind is ast.Call and type(node.func) is ast.Name and not node.keywords:  # set(), frozenset({...})
        if node.func.id == "set" and not node.args:
            return set()
        if node.func.id == "frozenset" and len(node.args) <= 1:
            return frozenset(_value(node.args[0], depth + 1) if node.args else ())
    raise ValueError(f"not a literal: {kind.__name__}")


def read_message(stream):
    """The next message from a binary stream; EOFError when the other side has gone."""
    line = stream.readline(MAX_LINE + 1)
    if not line:
        raise EOFError("the other process closed the channel")
    if len(line) > MAX_LINE or not line.endswith(b"\n"):
        raise ValueError("message too long or cut off")
    return decode(line)
