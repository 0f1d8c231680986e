"""The bottom layer: params, the project layout, errors, atomic writes, worker pools,
thread sizing and HTML pages."""
