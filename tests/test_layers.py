"""The house: no import cycles between Switchboard's modules. (The layers themselves are
import-linter contracts in pyproject.toml, checked by `lint-imports` in CI.)"""

from __future__ import annotations

PACKAGES = ("switchboard_lora",)


def test_no_module_imports_itself_through_others() -> None:
    import grimp

    graph = grimp.build_graph(*PACKAGES, exclude_type_checking_imports=True)
    cycles = sorted(
        (module, imported)
        for module in graph.modules
        for imported in graph.find_modules_directly_imported_by(module)
        if imported != module and graph.chain_exists(importer=imported, imported=module)
    )
    assert cycles == []


def test_the_graph_sees_the_imports_it_checks() -> None:
    """The check above could fail: the graph does hold real edges between the packages."""
    import grimp

    graph = grimp.build_graph(*PACKAGES, exclude_type_checking_imports=True)
    assert graph.chain_exists(
        importer="switchboard_lora.serving.http.app", imported="switchboard_lora.registry.errors"
    )
    assert graph.chain_exists(
        importer="switchboard_lora.cli.main", imported="switchboard_lora.serving.http.app"
    )
    assert not graph.chain_exists(
        importer="switchboard_lora.registry.store", imported="switchboard_lora.serving.http.app"
    )


def test_tests_and_benchmarks_import_the_package_not_its_folders() -> None:
    """`registry`, `router`, … are folders of the checkout (and other distributions' names on
    PyPI): imported by those names they would load a second copy beside `switchboard_lora`'s,
    with classes that never match (lint-imports checks the package itself)."""
    import re

    from support.paths import ROOT, package_folders

    names = "|".join(package_folders())
    folder_import = re.compile(rf"^\s*(from|import)\s+({names})(\.|\s)", re.M)
    found = [
        str(path.relative_to(ROOT))
        for top in ("tests", "bench", "support", "evaluation")
        for path in (ROOT / top).rglob("*.py")
        if folder_import.search(path.read_text())
    ]
    assert found == []
