"""The only modules of qtune that touch another library's private names or undocumented internals.

One module per library. Each names the versions its uses were checked against (``SUPPORTED``), refuses any other
at import in one line naming the installed and the supported versions, and lists what it touches (``TOUCHES``);
``tests/compat/test_compat.py`` asserts every entry exists with the signature expected on the installed versions,
and that no module outside this package touches a library's private name. ``scripts/check_newest.sh`` runs that
test against the newest versions pyproject.toml allows. Importing a module here imports nothing heavy: the
version is read from the package metadata, the library itself only when a function is called.
"""
