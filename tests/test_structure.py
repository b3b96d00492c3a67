"""The layout a student reads: imports flow one way (a DAG, imports inside functions included), no script imports
another script, utils.py imports nothing of the project, the paper's models know nothing of the speed rewrites,
and functions stay short enough to read."""

import ast

import pytest

from conftest import REPO

SCRIPTS = {'train_srresnet', 'train_srgan', 'eval', 'super_resolve', 'create_data_lists'}
MODULES = {path.stem for path in REPO.glob('*.py')}


def project_imports(name):
    """The project modules that REPO/<name>.py imports, at the top or inside functions."""
    imported = set()
    for node in ast.walk(ast.parse((REPO / f'{name}.py').read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split('.')[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split('.')[0])
    return imported & MODULES - {name}


def test_the_prescribed_scripts_and_shared_modules_are_there():
    assert SCRIPTS <= MODULES and {'models', 'datasets', 'utils'} <= MODULES


def test_imports_form_a_dag_and_no_script_imports_a_script():
    graph = {name: project_imports(name) for name in MODULES}
    for name, imported in graph.items():
        assert not imported & SCRIPTS, f'{name}.py imports the script(s) {imported & SCRIPTS}'
    assert graph['utils'] == set(), 'utils.py imports nothing of the project'
    assert 'speedups' not in graph['models'], 'models.py is the paper: it knows nothing of the speed rewrites'
    done, visiting = set(), []

    def visit(name):  # depth-first; a module met again while still on the path closes a cycle
        if name in visiting:
            pytest.fail(f'import cycle: {" -> ".join(visiting[visiting.index(name):] + [name])}')
        if name not in done:
            visiting.append(name)
            for imported in sorted(graph[name]):
                visit(imported)
            visiting.pop()
            done.add(name)

    for name in sorted(graph):
        visit(name)


def test_the_checker_finds_a_cycle_hidden_inside_a_function(tmp_path, monkeypatch):
    """project_imports sees imports inside functions, which is where cycles used to hide."""
    (tmp_path / 'a.py').write_text('import b\n')
    (tmp_path / 'b.py').write_text('def f():\n    from a import g\n')
    monkeypatch.setattr(__import__(__name__), 'REPO', tmp_path)
    monkeypatch.setattr(__import__(__name__), 'MODULES', {'a', 'b'})
    assert project_imports('a') == {'b'} and project_imports('b') == {'a'}


# the tutorial's own interfaces, kept as its readers know them, may take more parameters
PRESCRIBED_SIGNATURES = {('datasets', 'SRDataset.__init__'), ('utils', 'ImageTransforms.__init__'),
                         ('super_resolve', 'visualize_sr')}


def test_functions_are_short_and_take_few_parameters():
    too_long = []
    for path in sorted(REPO.glob('*.py')):
        tree = ast.parse(path.read_text())
        for parent in ast.walk(tree):
            for node in ast.iter_child_nodes(parent):
                if not isinstance(node, ast.FunctionDef):
                    continue
                name = f'{parent.name}.{node.name}' if isinstance(parent, ast.ClassDef) else node.name
                lines = node.end_lineno - node.lineno + 1
                args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
                params = [a.arg for a in args if a.arg not in {'self', 'cls'}]
                if lines > 60 or (len(params) > 6 and (path.stem, name) not in PRESCRIBED_SIGNATURES):
                    too_long.append(f'{path.name}: {name} ({lines} lines, {len(params)} parameters)')
    assert not too_long


def test_ci_runs_exactly_the_readmes_test_command():
    readme = (REPO / 'README.md').read_text()
    command = readme.split('Run the tests', 1)[1].split('```bash\n', 1)[1].split('\n', 1)[0]
    assert command.startswith('python -m pytest') and command in (REPO / '.ci' / 'run').read_text().splitlines()


def program_exits(tree):
    """(line, what) of every way `tree` ends the program: raise SystemExit, sys.exit(), exit(), quit(), os._exit()."""
    def name(node):
        return (node.id if isinstance(node, ast.Name) else
                f'{getattr(node.value, "id", "?")}.{node.attr}' if isinstance(node, ast.Attribute) else None)

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None:
            raised = name(node.exc.func if isinstance(node.exc, ast.Call) else node.exc)
            if raised == 'SystemExit':
                found.append((node.lineno, raised))
        elif isinstance(node, ast.Call) and name(node.func) in {'sys.exit', 'exit', 'quit', 'os._exit'}:
            found.append((node.lineno, name(node.func)))
    return found


def test_only_run_main_ends_the_program():
    """Library code raises typed errors (utils.UserError); utils.run_main, which every script's __main__ calls, is
    the one place a program exits (argparse's own exits aside)."""
    exits = []
    for path in sorted(REPO.glob('*.py')):
        tree = ast.parse(path.read_text())
        allowed = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and (path.stem, node.name) == ('utils', 'run_main'):
                allowed = {getattr(n, 'lineno', None) for n in ast.walk(node)}
        exits += [f'{path.name}:{line} {name}' for line, name in program_exits(tree) if line not in allowed]
    assert not exits


def test_the_exit_checker_finds_each_way_to_exit():
    source = ('import sys, os\nraise SystemExit(1)\nraise SystemExit\nsys.exit(2)\nexit()\nos._exit(0)\n'
              'raise ValueError("x")\nprint("SystemExit")\n')
    assert [name for _, name in program_exits(ast.parse(source))] == ['SystemExit', 'SystemExit', 'sys.exit', 'exit',
                                                                      'os._exit']


def test_every_script_runs_its_main_through_run_main():
    for path in sorted(REPO.glob('*.py')):
        tree = ast.parse(path.read_text())
        defines_main = any(isinstance(n, ast.FunctionDef) and n.name == 'main' for n in tree.body)
        guards = [n for n in tree.body if isinstance(n, ast.If) and "__name__ == '__main__'" in ast.unparse(n.test)]
        if defines_main:
            assert guards and 'run_main(main)' in ast.unparse(guards[-1]), f'{path.name}: main not run by run_main'
