"""Stage 4, auditing a dataset: `synth verify` (:mod:`~synth.audit.verify`), `synth info` /
`trace` (:mod:`~synth.audit.info`), `synth show` / `sheet` (:mod:`~synth.audit.visual`)."""
