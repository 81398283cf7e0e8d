"""The `where` filter of a forwarding rule: a small SQL-like boolean expression.

    temperature > 40 AND deviceName LIKE 'hall-%'
    NOT (status IN ('idle', 'off') OR battery.level IS NULL)

A real tokenizer and a recursive-descent parser build an AST, which is compiled into closures;
nothing is ever passed to `eval`. Grammar (keywords are case-insensitive):

    expr       := or
    or         := and ( OR and )*
    and        := not ( AND not )*
    not        := NOT not | predicate
    predicate  := '(' expr ')'
                | operand compop operand
                | operand [NOT] LIKE string [ESCAPE string]
                | operand [NOT] IN '(' literal ( ',' literal )* ')'
                | operand [NOT] BETWEEN operand AND operand
                | operand IS [NOT] NULL
                | operand                      -- a boolean field or TRUE/FALSE
    compop     := '=' | '==' | '!=' | '<>' | '<' | '<=' | '>' | '>='
    operand    := literal | field
    literal    := number | '-' number | string | TRUE | FALSE | NULL
    field      := name ( '.' name )*           -- name: letters, digits, _ ; or "double quoted"
    string     := '...'                         -- '' inside is one quote

Evaluation follows SQL's three-valued logic: a missing field is NULL; a comparison with NULL,
or between values of different types (number vs string), is UNKNOWN; only TRUE selects.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import msgspec

MAX_LENGTH = 4096
MAX_DEPTH = 64

Value = Any
Getter = Callable[[Any], Value]
Truth = bool | None
Predicate = Callable[[Any], Truth]


class WhereError(ValueError):
    """A filter does not parse; `position` is 1-based, in characters."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"{message} at position {position}")
        self.reason = message
        self.position = position


# -- tokens ------------------------------------------------------------------------------------------
KEYWORDS = {"AND", "OR", "NOT", "LIKE", "IN", "IS", "NULL", "TRUE", "FALSE", "BETWEEN", "ESCAPE"}
COMPARE = {"=", "==", "!=", "<>", "<", "<=", ">", ">="}


class Token(msgspec.Struct, array_like=True):
    kind: str  # num, str, name, qname, kw, op, end
    text: str
    value: Any
    pos: int  # 0-based offset


_NUMBER = re.compile(r"(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?")
_DIGITS = re.compile(r"\d+")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SPACE = re.compile(r"\s+")


def tokenize(text: str) -> list[Token]:
    out: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        m = _SPACE.match(text, i)
        if m:
            i = m.end()
            continue
        prev = out[-1] if out else None
        after_name = prev is not None and prev.kind in ("name", "qname") and prev.pos + len(prev.text) == i
        in_path = prev is not None and prev.kind == "op" and prev.value == "."
        if in_path and ch.isdigit():  # a list index in a path: samples.0
            m = _DIGITS.match(text, i)
            assert m is not None
            out.append(Token("num", m.group(), int(m.group()), i))
            i = m.end()
            continue
        if ch.isdigit() or (ch == "." and not after_name and i + 1 < n and text[i + 1].isdigit()):
            m = _NUMBER.match(text, i)
            assert m is not None
            end = m.end()
            if end < n and (text[end].isalnum() or text[end] == "_"):
                raise WhereError(f"malformed number {text[i : end + 1]!r}", i + 1)
            raw = m.group()
            value: Any = float(raw) if any(c in raw for c in ".eE") else int(raw)
            out.append(Token("num", raw, value, i))
            i = end
            continue
        if ch == "'" or ch == '"':
            j, parts = i + 1, []
            while True:
                k = text.find(ch, j)
                if k < 0:
                    what = "string" if ch == "'" else "quoted name"
                    raise WhereError(f"unterminated {what}", i + 1)
                parts.append(text[j:k])
                if k + 1 < n and text[k + 1] == ch:  # doubled quote: one literal quote
                    parts.append(ch)
                    j = k + 2
                    continue
                break
            value = "".join(parts)
            if ch == '"' and not value:
                raise WhereError("empty quoted name", i + 1)
            out.append(Token("str" if ch == "'" else "qname", text[i : k + 1], value, i))
            i = k + 1
            continue
        m = _NAME.match(text, i)
        if m:
            word = m.group()
            upper = word.upper()
            out.append(Token("kw" if upper in KEYWORDS else "name", word, upper if upper in KEYWORDS else word, i))
            i = m.end()
            continue
        two = text[i : i + 2]
        if two in ("==", "!=", "<>", "<=", ">="):
            out.append(Token("op", two, two, i))
            i += 2
            continue
        if ch in "=<>(),.-":
            out.append(Token("op", ch, ch, i))
            i += 1
            continue
        raise WhereError(f"unexpected character {ch!r}", i + 1)
    out.append(Token("end", "", None, n))
    return out


# -- AST ---------------------------------------------------------------------------------------------
class Node(msgspec.Struct, tag=True):
    pass


class Literal(Node):
    value: Any


class Field(Node):
    path: list[str]
    pos: int = 0  # 0-based offset in the text


class And(Node):
    items: list[Node]


class Or(Node):
    items: list[Node]


class Not(Node):
    item: Node


class Compare(Node):
    op: str
    left: Node
    right: Node


class Like(Node):
    operand: Node
    pattern: str
    escape: str | None
    negate: bool


class In(Node):
    operand: Node
    values: list[Any]
    negate: bool


class Between(Node):
    operand: Node
    low: Node
    high: Node
    negate: bool


class IsNull(Node):
    operand: Node
    negate: bool


class Truthy(Node):
    operand: Node


class Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0
        self.depth = 0

    # helpers
    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def advance(self) -> Token:
        t = self.tokens[self.i]
        self.i += 1
        return t

    def is_kw(self, *words: str) -> bool:
        return self.tok.kind == "kw" and self.tok.value in words

    def is_op(self, *ops: str) -> bool:
        return self.tok.kind == "op" and self.tok.value in ops

    def fail(self, expected: str, tok: Token | None = None) -> WhereError:
        t = tok or self.tok
        found = "the end of the filter" if t.kind == "end" else repr(t.text)
        return WhereError(f"expected {expected}, found {found}", t.pos + 1)

    def expect_kw(self, word: str) -> None:
        if not self.is_kw(word):
            raise self.fail(word)
        self.advance()

    def expect_op(self, op: str) -> None:
        if not self.is_op(op):
            raise self.fail(repr(op))
        self.advance()

    # grammar
    def parse(self) -> Node:
        if self.tok.kind == "end":
            raise WhereError("the filter is empty", 1)
        node = self.expr()
        if self.tok.kind != "end":
            raise self.fail("AND, OR or the end of the filter")
        return node

    def expr(self) -> Node:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise WhereError(f"the filter nests deeper than {MAX_DEPTH} levels", self.tok.pos + 1)
        try:
            return self.or_()
        finally:
            self.depth -= 1

    def or_(self) -> Node:
        items = [self.and_()]
        while self.is_kw("OR"):
            self.advance()
            items.append(self.and_())
        return items[0] if len(items) == 1 else Or(items)

    def and_(self) -> Node:
        items = [self.not_()]
        while self.is_kw("AND"):
            self.advance()
            items.append(self.not_())
        return items[0] if len(items) == 1 else And(items)

    def not_(self) -> Node:
        if self.is_kw("NOT"):
            self.advance()
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise WhereError(f"the filter nests deeper than {MAX_DEPTH} levels", self.tok.pos + 1)
            try:
                return Not(self.not_())
            finally:
                self.depth -= 1
        return self.predicate()

    def predicate(self) -> Node:
        if self.is_op("("):
            self.advance()
            node = self.expr()
            self.expect_op(")")
            return node
        start = self.tok
        left = self.operand()
        if self.tok.kind == "op" and self.tok.value in COMPARE:
            op = self.advance().value
            return Compare("=" if op == "==" else "!=" if op == "<>" else op, left, self.operand())
        negate = False
        if self.is_kw("NOT"):
            nxt = self.tokens[self.i + 1]
            if nxt.kind == "kw" and nxt.value in ("LIKE", "IN", "BETWEEN"):
                self.advance()
                negate = True
            else:
                raise self.fail("LIKE, IN or BETWEEN after NOT", nxt)
        if self.is_kw("LIKE"):
            self.advance()
            pattern = self.string("a quoted pattern after LIKE")
            escape = None
            if self.is_kw("ESCAPE"):
                self.advance()
                esc_tok = self.tok
                escape = self.string("a quoted escape character after ESCAPE")
                if len(escape) != 1:
                    raise WhereError("ESCAPE takes exactly one character", esc_tok.pos + 1)
            return Like(left, pattern, escape, negate)
        if self.is_kw("IN"):
            self.advance()
            self.expect_op("(")
            values = [self.literal("a literal in the IN list")]
            while self.is_op(","):
                self.advance()
                values.append(self.literal("a literal in the IN list"))
            self.expect_op(")")
            return In(left, values, negate)
        if self.is_kw("BETWEEN"):
            self.advance()
            low = self.operand()
            self.expect_kw("AND")
            return Between(left, low, self.operand(), negate)
        if self.is_kw("IS"):
            self.advance()
            neg = False
            if self.is_kw("NOT"):
                self.advance()
                neg = True
            self.expect_kw("NULL")
            return IsNull(left, neg)
        if isinstance(left, Literal) and not isinstance(left.value, bool):
            raise WhereError(f"{start.text} is a value, not a condition: compare it with something", start.pos + 1)
        return Truthy(left)

    def string(self, expected: str) -> str:
        if self.tok.kind != "str":
            raise self.fail(expected)
        return str(self.advance().value)

    def literal(self, expected: str) -> Any:
        node = self.operand(expected)
        if not isinstance(node, Literal):
            raise self.fail(expected, self.tokens[self.i - 1])
        return node.value

    def operand(self, expected: str = "a field name or a value") -> Node:
        t = self.tok
        if t.kind in ("num", "str"):
            self.advance()
            return Literal(t.value)
        if self.is_op("-"):
            self.advance()
            if self.tok.kind != "num":
                raise self.fail("a number after '-'")
            return Literal(-self.advance().value)
        if t.kind == "kw" and t.value in ("TRUE", "FALSE", "NULL"):
            self.advance()
            return Literal({"TRUE": True, "FALSE": False, "NULL": None}[t.value])
        if t.kind in ("name", "qname"):
            path = [str(self.advance().value)]
            start = t.pos
            while self.is_op("."):
                self.advance()
                if self.tok.kind not in ("name", "qname", "kw") and not (
                    self.tok.kind == "num" and isinstance(self.tok.value, int)
                ):
                    raise self.fail("a name after '.'")
                part = self.advance()
                path.append(part.text if part.kind in ("kw", "num") else str(part.value))
            return Field(path, start)
        raise self.fail(expected)


def parse(text: str) -> Node:
    if len(text) > MAX_LENGTH:
        raise WhereError(f"the filter is longer than {MAX_LENGTH} characters", MAX_LENGTH + 1)
    return Parser(text).parse()


# -- evaluation ----------------------------------------------------------------------------------------
def _is_number(v: Any) -> bool:
    return (type(v) is int or type(v) is float) and v == v  # NaN compares as unknown


def _comparable(a: Any, b: Any) -> bool:
    if _is_number(a):
        return _is_number(b)
    if type(a) is str:
        return type(b) is str
    if type(a) is bool:
        return type(b) is bool
    return False


def _compare(op: str, a: Any, b: Any) -> Truth:
    if a is None or b is None or not _comparable(a, b):
        return None
    if type(a) is bool and op not in ("=", "!="):
        return None
    if op == "=":
        return bool(a == b)
    if op == "!=":
        return bool(a != b)
    if op == "<":
        return bool(a < b)
    if op == "<=":
        return bool(a <= b)
    if op == ">":
        return bool(a > b)
    return bool(a >= b)


def like_regex(pattern: str, escape: str | None) -> re.Pattern[str]:
    out, i = [], 0
    while i < len(pattern):
        ch = pattern[i]
        if escape is not None and ch == escape and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
        i += 1
    return re.compile("".join(out), re.DOTALL)


Resolver = Callable[[list[str]], Getter]  # raises ValueError for a field that cannot exist


def compile_node(node: Node, resolve: Resolver) -> Predicate:
    """Closures over the AST; `resolve` turns a field path into a getter on the message."""
    if isinstance(node, And):
        parts = [compile_node(n, resolve) for n in node.items]

        def and_(m: Any) -> Truth:
            result: Truth = True
            for p in parts:
                v = p(m)
                if v is False:
                    return False
                if v is None:
                    result = None
            return result

        return and_
    if isinstance(node, Or):
        parts = [compile_node(n, resolve) for n in node.items]

        def or_(m: Any) -> Truth:
            result: Truth = False
            for p in parts:
                v = p(m)
                if v is True:
                    return True
                if v is None:
                    result = None
            return result

        return or_
    if isinstance(node, Not):
        inner = compile_node(node.item, resolve)

        def not_(m: Any) -> Truth:
            v = inner(m)
            return None if v is None else not v

        return not_
    if isinstance(node, Compare):
        left, right, op = _value(node.left, resolve), _value(node.right, resolve), node.op
        return lambda m: _compare(op, left(m), right(m))
    if isinstance(node, Like):
        get, rx, neg = _value(node.operand, resolve), like_regex(node.pattern, node.escape), node.negate

        def like(m: Any) -> Truth:
            v = get(m)
            if type(v) is not str:
                return None
            return (rx.fullmatch(v) is not None) != neg

        return like
    if isinstance(node, In):
        get, values, neg = _value(node.operand, resolve), node.values, node.negate

        def in_(m: Any) -> Truth:  # x IN (a, b) is x = a OR x = b, in three-valued logic
            v = get(m)
            result: Truth = False
            for c in values:
                r = _compare("=", v, c)
                if r is True:
                    return not neg
                if r is None:
                    result = None
            return None if result is None else neg

        return in_
    if isinstance(node, Between):
        get, low, high, neg = (
            _value(node.operand, resolve),
            _value(node.low, resolve),
            _value(node.high, resolve),
            node.negate,
        )

        def between(m: Any) -> Truth:
            v = get(m)
            a, b = _compare(">=", v, low(m)), _compare("<=", v, high(m))
            if a is False or b is False:
                return neg
            if a is None or b is None:
                return None
            return not neg

        return between
    if isinstance(node, IsNull):
        get, neg = _value(node.operand, resolve), node.negate
        return lambda m: (get(m) is None) != neg
    if isinstance(node, Truthy):
        get = _value(node.operand, resolve)

        def truthy(m: Any) -> Truth:
            v = get(m)
            return v if type(v) is bool else None

        return truthy
    raise TypeError(f"not a boolean expression: {node!r}")  # pragma: no cover - the parser prevents it


def _value(node: Node, resolve: Resolver) -> Getter:
    if isinstance(node, Literal):
        value = node.value
        return lambda m: value
    if isinstance(node, Field):
        try:
            return resolve(node.path)
        except ValueError as exc:  # the resolver knows no such field
            raise WhereError(str(exc), node.pos + 1) from None
    raise TypeError(f"not a value: {node!r}")  # pragma: no cover


def fields(node: Node) -> list[list[str]]:
    """Every field path the expression reads (for validation and documentation)."""
    out: list[list[str]] = []

    def walk(n: Any) -> None:
        if isinstance(n, Field):
            out.append(n.path)
        elif isinstance(n, Node):
            for name in n.__struct_fields__:
                value = getattr(n, name)
                for v in value if isinstance(value, list) else [value]:
                    walk(v)

    walk(node)
    return out


def compile_where(text: str, resolve: Resolver) -> Predicate:
    """Parse and compile; WhereError names the position of the first problem."""
    return compile_node(parse(text), resolve)
