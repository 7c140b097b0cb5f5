"""The floor every other package stands on: device meshes and sharding rules (`parallel`),
pytrees on the host (`trees`), files written whole (`files`), a run's `config.json`
(`config_file`) and the settings a rerun compares (`rerun`).

Imports nothing of visage_jax above it; `files`, `config_file` and `rerun` need no JAX, so the
commands check their arguments before they pay for importing it."""
