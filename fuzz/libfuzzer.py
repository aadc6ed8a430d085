"""One target under atheris (libFuzzer): `python -m fuzz.libfuzzer TARGET [libFuzzer flags]`.

`python -m fuzz` starts this per target with a time limit, a per-input timeout, the crash
directory as artifact prefix, and a corpus directory seeded from the target's generated
seeds. The router's and the edge's modules (and dnslib, which the full DNS parse uses) are
instrumented for coverage; aiohttp's C parser is not (it is compiled), so on the HTTP side
the guidance comes from the edge's rules.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["georouter", "edge", "cdn", "dnslib"]):
    import edge.cache  # noqa: F401
    import georouter.responder  # noqa: F401  (imported here to be instrumented)

from fuzz.targets import TARGETS


def main() -> None:
    target = TARGETS[sys.argv[1]]()

    def one_input(data: bytes) -> None:
        target.check(data)

    atheris.Setup([sys.argv[0], *sys.argv[2:]], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
