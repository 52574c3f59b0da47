"""The WebUI's X/Y/Z plot script: axes, value syntax, cell order, grid drawing, one queue job.

- ``values``: the value syntax (quoted CSV, ``1-5``, ``1-5 (+2)``, ``1-10 [5]``, float ranges).
- ``axes``: the axis types under the WebUI's names and indices, and what each changes.
- ``plan``: the script's arguments (UI or the API's positional ``script_args``) resolved into
  the cells to render, checked before anything runs.
- ``grid``: drawing a grid with its legend (PIL).
- ``job``: rendering the cells on the queue, streaming them to disk, saving the grids.
"""
