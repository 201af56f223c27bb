import jax

jax.config.update("jax_enable_x64", True)
# as diffrax's tests: broadcasting must be written out, never implied by differing ranks
jax.config.update("jax_numpy_rank_promotion", "raise")
