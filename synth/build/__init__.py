"""Stage 3, a dataset build (`synth build` / `pack` / `merge`): the spec (:mod:`~synth.build.spec`),
request -> job (:mod:`~synth.build.jobs`), the sample producers (:mod:`~synth.build.producers`),
the shards on worker processes (:mod:`~synth.build.run`), the output folder
(:mod:`~synth.build.outdir`), the manifests (:mod:`~synth.build.manifests`) and
:mod:`~synth.build.merge`."""
