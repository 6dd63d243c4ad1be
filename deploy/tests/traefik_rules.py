"""Traefik v3 router rules (`match:` of an IngressRoute), parsed and evaluated against a request.

So that the tests can ask what the ingress actually routes, path by path, instead of looking
for substrings in the rule. Covers the matchers the manifests use: Host, Path, PathPrefix,
PathRegexp, Method, with `&&`, `||`, `!` and parentheses (`&&` binds tighter, as in Go). Any
other matcher is an error, so a rule this module cannot judge fails the tests rather than
passing them. PathRegexp, like Traefik's (Go's regexp.MatchString), is not anchored: the
pattern's own ^ and $ anchor it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TOKEN = re.compile(r"\s*(?:(&&|\|\||!|\(|\)|,)|([A-Za-z]+)|`([^`]*)`|\"((?:[^\"\\]|\\.)*)\")")
MATCHERS = {"Host", "Path", "PathPrefix", "PathRegexp", "Method"}


class RuleError(ValueError):
    pass


@dataclass(frozen=True)
class Request:
    host: str
    path: str
    method: str = "GET"


def _tokens(rule: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(rule):
        if rule[pos:].strip() == "":
            break
        m = TOKEN.match(rule, pos)
        if not m:
            raise RuleError(f"cannot read {rule[pos:]!r} in {rule!r}")
        op, name, backquoted, quoted = m.groups()
        if op:
            out.append(("op", op))
        elif name:
            out.append(("name", name))
        else:
            out.append(("str", backquoted if backquoted is not None else quoted))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, rule: str):
        self.rule = rule
        self.toks = _tokens(rule)
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, kind: str, value: str | None = None) -> str:
        tok = self.peek()
        if tok is None or tok[0] != kind or (value is not None and tok[1] != value):
            raise RuleError(f"expected {value or kind} at token {self.i} of {self.rule!r}, got {tok}")
        self.i += 1
        return tok[1]

    def parse(self):
        tree = self.or_()
        if self.peek() is not None:
            raise RuleError(f"unexpected {self.peek()} in {self.rule!r}")
        return tree

    def or_(self):
        terms = [self.and_()]
        while self.peek() == ("op", "||"):
            self.i += 1
            terms.append(self.and_())
        return ("or", terms) if len(terms) > 1 else terms[0]

    def and_(self):
        terms = [self.not_()]
        while self.peek() == ("op", "&&"):
            self.i += 1
            terms.append(self.not_())
        return ("and", terms) if len(terms) > 1 else terms[0]

    def not_(self):
        if self.peek() == ("op", "!"):
            self.i += 1
            return ("not", self.not_())
        if self.peek() == ("op", "("):
            self.i += 1
            inner = self.or_()
            self.take("op", ")")
            return inner
        name = self.take("name")
        if name not in MATCHERS:
            raise RuleError(f"matcher {name} is not understood by traefik_rules.py (rule {self.rule!r})")
        self.take("op", "(")
        args = [self.take("str")]
        while self.peek() == ("op", ","):
            self.i += 1
            args.append(self.take("str"))
        self.take("op", ")")
        if name != "Method" and len(args) != 1:
            raise RuleError(f"{name} takes one argument in Traefik v3 (rule {self.rule!r})")
        return ("matcher", name, tuple(args))


def parse(rule: str):
    return _Parser(rule).parse()


def _eval(node, req: Request) -> bool:
    kind = node[0]
    if kind == "or":
        return any(_eval(n, req) for n in node[1])
    if kind == "and":
        return all(_eval(n, req) for n in node[1])
    if kind == "not":
        return not _eval(node[1], req)
    _, name, args = node
    if name == "Host":
        return req.host.lower() == args[0].lower()
    if name == "Path":
        return req.path == args[0]
    if name == "PathPrefix":
        return req.path.startswith(args[0])
    if name == "PathRegexp":
        return re.search(args[0], req.path) is not None
    if name == "Method":
        return req.method.upper() in {a.upper() for a in args}
    raise RuleError(name)


def matches(rule: str, req: Request) -> bool:
    return _eval(parse(rule), req)


def hosts(rule: str) -> set[str]:
    """Every host the rule names in a Host matcher."""
    found: set[str] = set()

    def walk(node):
        if node[0] in ("or", "and"):
            for n in node[1]:
                walk(n)
        elif node[0] == "not":
            walk(node[1])
        elif node[1] == "Host":
            found.add(node[2][0])

    walk(parse(rule))
    return found
