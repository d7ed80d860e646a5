"""From a command line to running ranks: what is refused before anything starts (`refusals`,
`preflight`, `options`: every option honoured or refused in one line), how ranks are started
(`launch`: nerfstudio's launcher replaced; `prespawn`: CUDA ranks importing while the command line
is parsed; `rank`: one rank's life) and what they run on (`devices`, `gpu_count`, `memcap`)."""
