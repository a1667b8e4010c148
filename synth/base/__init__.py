"""What every stage of the generator uses: the process pool (:mod:`synth.base.parallel`) and the
exact compact slice store (:mod:`synth.base.slice_store`)."""
