"""Stage 3, a dataset build (`synth build` / `pack` / `merge`): the spec (:mod:`~synth.building.spec`),
request -> job (:mod:`~synth.building.jobs`), the sample producers (:mod:`~synth.building.producers`),
the shards on worker processes (:mod:`~synth.building.run`), the output folder
(:mod:`~synth.building.outdir`), the manifests (:mod:`~synth.building.manifests`) and
:mod:`~synth.building.merge`."""
