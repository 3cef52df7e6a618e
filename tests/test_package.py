"""Pins the package's shape: imports run one way between its folders, no module reaches a
private name of another, nothing outside models/ asks a model for its class, and no module
grows past the size where it should be split. A static scan of the source (`ast`)."""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / 'perceiver_ar_vl'
MODULES = sorted(PACKAGE.rglob('*.py'))
MODEL_CLASSES = {'PerceiverAR', 'Transformer', 'ECP'}
# Folders by layer, lowest first: a module may import its own folder and any lower one.
LAYERS = ['', 'layers', 'models', 'data', 'sampling', 'training', 'experiments']


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def folder(name: str) -> str:
  parts = name.split('.')
  return parts[1] if len(parts) > 2 or (len(parts) == 2 and (PACKAGE / parts[1]).is_dir()) else ''


def package_imports(tree: ast.Module):
  """(module, imported name or None) for every import of perceiver_ar_vl in the tree."""
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and (node.module or '').startswith('perceiver_ar_vl'):
      for alias in node.names:
        yield node.module, alias.name
    elif isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name.startswith('perceiver_ar_vl'):
          yield alias.name, None


@pytest.mark.parametrize('path', MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_private_name_crosses_modules(path):
  tree = ast.parse(path.read_text())
  here = module_name(path)
  for module, name in package_imports(tree):
    assert not (name or '').startswith('_'), f'{here} imports {name} from {module}'
  imported = {alias.asname or alias.name for module, alias in _aliases(tree)}
  for node in ast.walk(tree):
    if (
      isinstance(node, ast.Attribute)
      and isinstance(node.value, ast.Name)
      and node.value.id in imported
      and node.attr.startswith('_')
      and not node.attr.startswith('__')
    ):
      pytest.fail(f'{here} uses {node.value.id}.{node.attr}, a private name of another module')


def _aliases(tree: ast.Module):
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and (node.module or '').startswith('perceiver_ar_vl'):
      for alias in node.names:
        yield node.module, alias


@pytest.mark.parametrize('path', MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_isinstance_on_model_classes_outside_models(path):
  if path.parent.name == 'models':
    return
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Call) and getattr(node.func, 'id', '') == 'isinstance':
      names = {
        n.attr if isinstance(n, ast.Attribute) else getattr(n, 'id', '')
        for n in ast.walk(node.args[1])
      }
      assert not names & MODEL_CLASSES, (
        f'{path.name} dispatches on a model class: {ast.unparse(node)}'
      )


@pytest.mark.parametrize('path', MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_down_the_layers(path):
  """A module imports only its own folder or a lower one (top-level modules are the lowest,
  except those that build or restore a model and those that run a model's evaluation)."""
  here = module_name(path)
  own = LAYERS.index(folder(here))
  for module, name in package_imports(ast.parse(path.read_text())):
    target = module if name is None else f'{module}.{name}'
    if (PACKAGE.parent / target.replace('.', '/')).with_suffix('.py').exists() or (
      PACKAGE.parent / target.replace('.', '/')
    ).is_dir():
      module = target
    other = folder(module)
    if own == 0 or other == '':
      continue  # top-level modules are plumbing: checked for cycles below
    assert LAYERS.index(other) <= own, f'{here} imports {module}: upward'


def test_package_imports_have_no_cycle():
  graph = {}
  for path in MODULES:
    here = module_name(path)
    deps = set()
    for module, name in package_imports(ast.parse(path.read_text())):
      target = module if name is None else f'{module}.{name}'
      base = PACKAGE.parent / target.replace('.', '/')
      deps.add(target if base.with_suffix('.py').exists() or base.is_dir() else module)
    graph[here] = {d for d in deps if d != here and not here.startswith(d + '.')}
  state = {}

  def visit(node, stack):
    state[node] = 'open'
    for dep in graph.get(node, ()):
      if state.get(dep) == 'open':
        pytest.fail('import cycle: ' + ' -> '.join([*stack, node, dep]))
      if dep not in state:
        visit(dep, [*stack, node])
    state[node] = 'done'

  for node in graph:
    if node not in state:
      visit(node, [])


@pytest.mark.parametrize('path', MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_stay_small(path):
  assert len(path.read_text().splitlines()) <= 330, f'{path.name}: split it by concern'
