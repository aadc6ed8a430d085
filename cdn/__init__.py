"""cdn: the contract the router and the edge share (imports neither program)."""

__all__: list[str] = []
