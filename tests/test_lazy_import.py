"""`import hybrid_node` and `hybrid-node --help` stay light: the public names load on first use."""

import ast
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import hybrid_node as hn

ROOT = Path(__file__).resolve().parent.parent


def _type_checking_imports() -> dict[str, tuple[str, str]]:
    tree = ast.parse((ROOT / "hybrid_node" / "__init__.py").read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING")
    names = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom)
        module = "." * node.level + (node.module or "")
        for alias in node.names:
            names[alias.asname or alias.name] = (module, alias.name)
    return names


def test_lazy_table_matches_the_type_checking_imports():
    lazy = {k: (m if a else ".", a or m.lstrip(".")) for k, (m, a) in hn._LAZY.items()}
    assert lazy == _type_checking_imports()
    for name in hn.__all__:
        assert getattr(hn, name) is not None


def test_import_and_help_do_not_load_torch():
    code = "import sys, hybrid_node, hybrid_node.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "hybrid_node", "--help"], capture_output=True, text=True, cwd=ROOT)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0 and "demo" in proc.stdout
    assert elapsed < 5.0  # about 0.2 s measured; the bound leaves room for a loaded machine


def test_public_names_and_submodules_resolve():
    assert hn.solvers.implicit.KenCarp4 is hn.KenCarp4
    assert hn.METHODS["dopri5"] is not None
    assert "odeint" in dir(hn)


def test_an_eager_solve_does_not_load_the_compiler():
    """The compiler (``torch._dynamo``, ~0.7 s to import) loads only when something is compiled: the
    solves that graph-break out of a user's ``torch.compile`` are wrapped lazily."""
    code = textwrap.dedent(
        """
        import sys, torch, hybrid_node as hn

        class Field(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.linear = torch.nn.Linear(2, 2)

            def forward(self, t, y):
                return self.linear(y)

        hn.odeint(lambda t, y: -y, torch.ones(2), torch.linspace(0, 1, 3))
        hn.nn.ODEBlock(Field())(torch.ones(1, 2))
        print("torch._dynamo" in sys.modules)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"
