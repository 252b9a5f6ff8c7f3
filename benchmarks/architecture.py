"""Draw retrieval's layers from its import graph: docs/architecture.png, and the dependency table.

Not a benchmark but a docs step that reads the code: grimp (import-linter's graph library)
parses every import statement in ``retrieval`` (those inside functions too), and each import
between two of its top-level packages becomes an arrow from the importer to the imported.
The layers are those of the import-linter "layers" contract in pyproject.toml (the one
``lint-imports`` enforces in .ci/run), or ``LAYERS`` below where there is none: the order
docs/architecture.md describes. The picture has two halves: the layers as boxes, each naming
the heavy third-party packages that package imports, and the import matrix, where an import
against the layers is a red cell, so the picture shows a broken rule instead of hiding it.

    .venv/bin/python -m benchmarks.architecture                   # writes docs/architecture.png
    .venv/bin/python -m benchmarks.architecture --table           # markdown: who imports each heavy dependency
    .venv/bin/python -m benchmarks.architecture --dot arch.dot    # the same graph for Graphviz, if you have it

Only matplotlib is needed to draw (Graphviz is not); the tests never run this.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "retrieval"

#: Bottom to top, the way data flows: a package may import those in layers below it (and the
#: shared modules), never those above. Packages on one layer are independent of each other.
LAYERS: list[list[str]] = [
    ["media"],
    ["aligners"],
    ["storage", "ann"],
    ["ingest"],
    ["search"],
    ["evaluation", "training"],
    ["api"],
    ["server", "cluster", "cli"],
]
#: Root modules every layer may import: named exceptions, progress reporting, the BLAS switch,
#: the engine's own cache folder.
SHARED = ["errors", "progress", "blas", "paths"]

#: Third-party packages worth one owner each (the rest, numpy, PIL, sqlite3, are everywhere).
HEAVY = {
    "faiss": "faiss",
    "torch": "torch", "torchvision": "torch", "open_clip": "open_clip", "timm": "timm",
    "onnxruntime": "onnxruntime", "rapidocr": "rapidocr",
    "fastapi": "web stack", "starlette": "web stack", "uvicorn": "web stack", "pydantic": "web stack",
    "ray": "ray", "fsspec": "fsspec",
    "click": "click",
    "pyarrow": "pyarrow",
    "watchfiles": "watchfiles",
    "sqlite_utils": "sqlite-utils",
    "matplotlib": "matplotlib",
}


@dataclass
class Architecture:
    """The package-level import graph of ``retrieval``, and the layers it is checked against."""

    #: Bottom to top: (packages, independent). Packages of an independent layer must not import
    #: each other; those of a layer written with ":" in the contract may.
    layers: list[tuple[list[str], bool]] = field(default_factory=list)
    #: importer package -> imported package -> number of its modules that import the other.
    edges: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    #: package -> heavy dependencies (HEAVY's display names) it imports directly.
    heavy: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    #: Packages found in the code but in no layer and not SHARED: not drawn, reported.
    unplaced: set[str] = field(default_factory=set)
    #: Where the layers came from: the import-linter contract or this module's LAYERS.
    source: str = "LAYERS"

    def layer_of(self, package: str) -> int:
        for level, (names, _) in enumerate(self.layers):
            if package in names:
                return level
        return -1  # shared

    def upward(self, importer: str, imported: str) -> bool:
        """An import against the data's direction, or between independent packages of one layer."""
        if imported in SHARED:
            return False
        if importer in SHARED:
            return True
        mine, theirs = self.layer_of(importer), self.layer_of(imported)
        return theirs > mine or (theirs == mine and self.layers[mine][1])


def contract_layers(pyproject: Path = ROOT / "pyproject.toml") -> list[tuple[list[str], bool]] | None:
    """The layers of the first import-linter "layers" contract over ``retrieval``, bottom to top.

    import-linter lists layers top first; ``a | b`` are independent siblings, ``a : b`` may
    import each other, ``(a)`` is optional. None when pyproject.toml has no such contract.
    """
    import tomllib

    config = tomllib.loads(pyproject.read_text()).get("tool", {}).get("importlinter", {})
    for contract in config.get("contracts", []):
        if contract.get("type") != "layers":
            continue
        containers = contract.get("containers", [])
        if containers and PACKAGE not in containers:
            continue
        layers = []
        for line in contract.get("layers", []):
            independent = ":" not in line
            names = [part.strip().strip("()").removeprefix(PACKAGE + ".") for part in line.replace(":", "|").split("|")]
            if any("." in name for name in names):
                break  # a contract over one package's modules, not the top-level layers
            names = [n for n in names if n]
            if not set(names) <= set(SHARED):  # the shared root modules are drawn in a column of their own
                layers.append((names, independent))
        else:
            if layers:
                return list(reversed(layers))
    return None


def read_graph(exclude_type_checking: bool = True) -> Architecture:
    """Group grimp's module graph by top-level package (``retrieval.ann.index`` -> ``ann``)."""
    import grimp

    graph = grimp.build_graph(
        PACKAGE, include_external_packages=True, exclude_type_checking_imports=exclude_type_checking, cache_dir=None
    )
    from_contract = contract_layers()
    arch = Architecture(
        layers=from_contract or [(names, True) for names in LAYERS],
        source="the import-linter contract in pyproject.toml" if from_contract else "LAYERS in benchmarks/architecture.py",
    )
    placed = {name for names, _ in arch.layers for name in names} | set(SHARED)
    for module in graph.modules:
        if not module.startswith(PACKAGE + "."):
            continue
        importer = module.split(".")[1]
        if importer.startswith("__"):  # __init__ and __main__ of the root package: entry points only
            continue
        if importer not in placed:
            arch.unplaced.add(importer)
        for imported_module in graph.find_modules_directly_imported_by(module):
            parts = imported_module.split(".")
            if parts[0] != PACKAGE:
                if parts[0] in HEAVY:
                    arch.heavy[importer].add(HEAVY[parts[0]])
                continue
            if len(parts) < 2 or parts[1] == importer or parts[1].startswith("__"):
                continue
            arch.edges[importer][parts[1]] = arch.edges[importer].get(parts[1], 0) + 1
    return arch


def dependency_table(arch: Architecture) -> str:
    """Markdown: each heavy dependency and the packages that import it."""
    owners: dict[str, list[str]] = defaultdict(list)
    for package, deps in arch.heavy.items():
        for dep in deps:
            owners[dep].append(package)
    lines = ["| dependency | imported only by |", "|---|---|"]
    for dep in sorted(owners):
        lines.append(f"| {dep} | {', '.join(f'`{p}/`' if p not in SHARED + ['api'] else f'`{p}`' for p in sorted(owners[dep]))} |")
    return "\n".join(lines)


def to_dot(arch: Architecture) -> str:
    """The same graph in Graphviz's language, one rank per layer."""
    out = ["digraph retrieval {", "  rankdir=BT; node [shape=box, fontname=Helvetica];"]
    for layer in [SHARED, *(names for names, _ in arch.layers)]:
        out.append("  { rank=same; " + " ".join(f'"{p}";' for p in layer) + " }")
    for importer, targets in sorted(arch.edges.items()):
        for imported in sorted(targets):
            colour = "red" if arch.upward(importer, imported) else "gray40"
            out.append(f'  "{importer}" -> "{imported}" [color={colour}];')
    out.append("}")
    return "\n".join(out)


def draw(arch: Architecture, out: Path) -> None:
    """Two panels: the layers as boxes (bottom to top), and the import matrix that checks them.

    The matrix (a design structure matrix) has a row per importer and a column per imported
    package, both in layer order from the top; the number in a cell is how many modules of
    the row's package import modules of the column's. A layered design leaves everything on
    and above the diagonal empty: a cell there is an import against the data's direction,
    drawn red. (Arrows between boxes would cross each other dozens of times; the matrix
    shows every package-level import without hiding one behind another.)
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch, Rectangle

    layers = [names for names, _ in arch.layers]
    fig, (stack, matrix) = plt.subplots(1, 2, figsize=(16, 7.8), gridspec_kw={"width_ratios": [1.15, 1.0]})

    # -- left: the layers ----------------------------------------------------------------
    box_w, box_h, gap, width = 2.3, 0.7, 0.9, 11.5
    stack.set_xlim(0, width)
    stack.set_ylim(0.2, (len(layers) + 0.6) * gap)
    stack.axis("off")
    for level, names in enumerate(layers):
        y = (level + 1) * gap
        band = "#f3f5f9" if level % 2 else "#fbfcfd"
        stack.add_patch(Rectangle((0, y - gap / 2), width - 2.2, gap, color=band, zorder=0))
        stack.text(0.12, y, str(level + 1), fontsize=9, color="#8892a6", va="center")
        for i, name in enumerate(names):
            x = 0.5 + (width - 2.7) / 2 + (i - (len(names) - 1) / 2) * (box_w + 0.25)
            _box(stack, FancyBboxPatch, x, y, box_w, box_h, name, arch.heavy.get(name), shared=False)
        if level < len(layers) - 1:
            stack.annotate("", xy=(0.35, y + 0.12), xytext=(0.35, y + gap - 0.12),
                           arrowprops={"arrowstyle": "-|>", "color": "#8892a6", "lw": 0.8})
    stack.text(width - 1.1, (len(layers) + 0.1) * gap, "shared\n(any layer)", ha="center", va="center",
               fontsize=9, color="#8892a6")
    for i, name in enumerate(SHARED):
        _box(stack, FancyBboxPatch, width - 1.1, (len(layers) - 0.8 - i) * gap, 1.6, box_h * 0.8, name,
             arch.heavy.get(name), shared=True)
    stack.set_title(f"layers, bottom to top ({arch.source}); a package imports only those\n"
                    "below it and the shared modules. Amber: the third-party packages it imports", fontsize=10, loc="left")

    # -- right: the import matrix ---------------------------------------------------------
    order = [name for names in reversed(layers) for name in names] + SHARED
    index = {name: i for i, name in enumerate(order)}
    n = len(order)
    against = 0
    for importer, targets in arch.edges.items():
        for imported, count in targets.items():
            if importer not in index or imported not in index:
                continue
            bad = arch.upward(importer, imported)
            against += bad
            r, c = index[importer], index[imported]
            matrix.add_patch(Rectangle((c, r), 1, 1, color="#d62728" if bad else "#9fb3d1", zorder=1))
            matrix.text(c + 0.5, r + 0.5, str(count), ha="center", va="center", fontsize=7.5,
                        color="white" if bad else "#1d2a44", zorder=2)
    for i in range(n):  # the diagonal: a package's imports of itself are not counted
        matrix.add_patch(Rectangle((i, i), 1, 1, color="#e4e7ec", zorder=0))
    edge = 0
    for names in [*reversed(layers), SHARED]:  # lines between layers
        edge += len(names)
        matrix.axhline(edge, color="#34405a", lw=0.8)
        matrix.axvline(edge, color="#34405a", lw=0.8)
    matrix.set_xlim(0, n)
    matrix.set_ylim(n, 0)
    matrix.set_aspect("equal")
    labels = [f"{name}/" if name not in SHARED and name != "api" else name for name in order]
    matrix.set_xticks([i + 0.5 for i in range(n)], labels, rotation=60, ha="right", fontsize=8.5, family="monospace")
    matrix.set_yticks([i + 0.5 for i in range(n)], labels, fontsize=8.5, family="monospace")
    matrix.tick_params(length=0)
    for spine in matrix.spines.values():
        spine.set_color("#34405a")
    matrix.set_xlabel("imported", fontsize=9)
    matrix.set_ylabel("importer", fontsize=9)
    verdict = f"red: {against} import(s) against the layers" if against else "none against the layers"
    matrix.set_title(f"modules of the row's package that import the column's package\n"
                     f"blue: allowed (below the diagonal); {verdict}", fontsize=10, loc="left")

    fig.suptitle("retrieval's layers, read from its imports by grimp: python -m benchmarks.architecture",
                 fontsize=11, x=0.01, ha="left")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)


def _box(ax, patch, x: float, y: float, w: float, h: float, name: str, heavy: set[str] | None, shared: bool) -> None:
    ax.add_patch(patch((x - w / 2, y - h / 2), w, h, zorder=4, boxstyle="round,pad=0.02,rounding_size=0.08",
                       facecolor="#f1f1f1" if shared else "#e8eef8", edgecolor="#34405a", linewidth=1.0))
    label = name if shared or name == "api" else f"{name}/"
    ax.text(x, y + (0.12 if heavy else 0), label, ha="center", va="center", fontsize=10.5, fontweight="bold",
            zorder=5, family="monospace")
    if heavy:
        lines = [""]
        for name in sorted(heavy):  # wrapped to the box's width
            if lines[-1] and len(lines[-1]) + len(name) > 24:
                lines.append("")
            lines[-1] += (", " if lines[-1] else "") + name
        ax.text(x, y - 0.15, "\n".join(lines), ha="center", va="center", fontsize=7, color="#7a4b00", zorder=5,
                linespacing=1.0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "architecture.png", help="the PNG to write")
    parser.add_argument("--table", action="store_true", help="print who imports each heavy dependency, as markdown")
    parser.add_argument("--dot", type=Path, help="also write the graph in Graphviz's DOT language")
    parser.add_argument("--with-type-checking", action="store_true",
                        help="count imports under `if TYPE_CHECKING:` too (they never run)")
    args = parser.parse_args(argv)
    arch = read_graph(exclude_type_checking=not args.with_type_checking)
    if arch.unplaced:
        print(f"packages not in LAYERS or SHARED (not drawn): {', '.join(sorted(arch.unplaced))}")
    against = sorted((a, b) for a, targets in arch.edges.items() for b in targets if arch.upward(a, b))
    for importer, imported in against:
        print(f"against the layers: {importer} imports {imported}")
    if args.table:
        print(dependency_table(arch))
        return
    if args.dot:
        args.dot.write_text(to_dot(arch) + "\n")
    draw(arch, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
