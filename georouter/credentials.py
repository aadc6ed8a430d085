"""Who may do what on the router's control port: a credential per node, one for operators.

Theory of operation. Each node has its own bearer token (`[[nodes]] token`, with
`previous_tokens` during a rotation); it authorizes that node's reports and report channel
and nothing else: a report for node A signed with node B's token is refused 403
("wrong_node"). Operator actions (drain, undrain, weight, purge, prewarm) need
`router.operator_token` (or one of `router.previous_operator_tokens`), which no edge holds:
a node's token there is refused 403 ("not_operator"). No token, or one nobody holds, is a
401 ("missing", "unknown").

A topology from before per-node tokens keeps working: a node without `token` is
authorized by the shared `router.token` (and `router.previous_tokens`), and without
`router.operator_token` operators use `router.token` too. The router says so in its log,
because then any edge can speak for every such node and act as an operator.

Pure: every comparison is cdn.auth.authorized (constant time, every token compared).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from cdn import auth

if TYPE_CHECKING:
    from georouter.config import RouterConfig

RefusalReason = Literal["missing", "unknown", "wrong_node", "not_operator"]
REFUSAL_REASONS: tuple[RefusalReason, ...] = ("missing", "unknown", "wrong_node", "not_operator")


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request is refused: 401 for no or an unknown credential, 403 for the wrong one."""

    reason: RefusalReason

    @property
    def status(self) -> int:
        return 401 if self.reason in ("missing", "unknown") else 403


@dataclass(frozen=True, slots=True)
class Credentials:
    """The tokens the control port accepts: per node (current first) and for operators."""

    nodes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    operator: tuple[str, ...] = ()
    shared_nodes: tuple[str, ...] = ()  # nodes authorized by the shared router.token
    shared_operator: bool = False  # operators use router.token: no operator_token set

    @classmethod
    def of(cls, config: RouterConfig) -> Credentials:
        """The credentials `config` defines; the shared router.token stands in for a node
        without its own token and, without router.operator_token, for the operators."""
        shared = (config.router.token, *config.router.previous_tokens)
        nodes = {n.name: n.tokens or shared for n in config.nodes}
        operator = (config.router.operator_token, *config.router.previous_operator_tokens)
        return cls(
            nodes=nodes,
            operator=operator if config.router.operator_token else shared,
            shared_nodes=tuple(n.name for n in config.nodes if not n.tokens),
            shared_operator=not config.router.operator_token,
        )

    def node_token(self, node: str) -> str:
        """The token the router presents to `node`'s control port (purge fan-out)."""
        tokens = self.nodes.get(node, ())
        return tokens[0] if tokens else ""

    def for_node(self, authorization: str | None, node: str) -> Refusal | None:
        """None if the header carries `node`'s credential; else why not."""
        if auth.authorized(authorization, self.nodes.get(node, ())):
            return None
        return self._refusal(authorization, wrong="wrong_node")

    def for_any_node(self, authorization: str | None) -> Refusal | None:
        """None if the header carries some node's credential (a channel before its first
        report names the node); else why not."""
        if auth.authorized(authorization, self._node_tokens()):
            return None
        return self._refusal(authorization, wrong="wrong_node")

    def for_operator(self, authorization: str | None) -> Refusal | None:
        """None if the header carries an operator's credential; else why not."""
        if auth.authorized(authorization, self.operator):
            return None
        return self._refusal(authorization, wrong="not_operator")

    def _node_tokens(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(t for tokens in self.nodes.values() for t in tokens))

    def _refusal(self, authorization: str | None, *, wrong: RefusalReason) -> Refusal:
        if not auth.credentials(authorization):
            return Refusal("missing")
        held = (*self._node_tokens(), *self.operator)
        return Refusal(wrong if auth.authorized(authorization, held) else "unknown")
