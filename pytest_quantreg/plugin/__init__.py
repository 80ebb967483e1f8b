"""The pytest plugin: :mod:`.hooks` (the entry point, each hook a few lines), :mod:`.startup` (settings
checked, the run set up, its header), :mod:`.marker` (the ``quantreg`` marker and parametrization),
:mod:`.fixtures`, :mod:`.check` (the ``quantreg`` fixture's checks), :mod:`.hookspec` (the hooks other
plugins implement) and :mod:`.xdist`."""
