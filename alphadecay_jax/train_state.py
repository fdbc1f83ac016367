"""TrainState, its sharded creation, and the jitted train / eval steps.

One `jax.jit` train step with explicit in/out shardings and a donated state:
gradients (optionally accumulated over micro-batches with `lax.scan`) -> the optax
chain (extra-args transforms such as SAM also get `grad_fn`, the gradient of the same
batch at other params) -> new params, guarded so that a non-finite loss, gradient or
update skips the update
(the step counter still advances, so data order and schedule stay aligned) and is
counted.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from alphadecay_jax import model as model_lib
from alphadecay_jax import optimizers
from alphadecay_jax import sharding as sharding_lib


class TrainState(NamedTuple):
  step: jax.Array                # int32 scalar: updates attempted so far
  params: Any                    # pure dict of float32 arrays
  opt_state: Any
  rng: jax.Array                 # raw uint32[2] key (checkpoint friendly)
  nonfinite_in_a_row: jax.Array  # int32: consecutive skipped updates
  nonfinite_total: jax.Array     # int32: all skipped updates


class StateSpec(NamedTuple):
  """Everything static about the state: model graph, abstract shapes and shardings."""
  graphdef: nnx.GraphDef
  abstract: TrainState           # ShapeDtypeStructs carrying their shardings
  shardings: TrainState
  logical_axes: Any


def _init_params(model_cfg: model_lib.ModelConfig, rng: jax.Array) -> Any:
  model = model_lib.Transformer(model_cfg, rngs=nnx.Rngs(params=rng))
  return nnx.to_pure_dict(nnx.split(model)[1])


def _init_state(model_cfg: model_lib.ModelConfig, tx: optax.GradientTransformation,
                seed: jax.Array) -> TrainState:
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed))
  params = _init_params(model_cfg, init_rng)
  zero = jnp.zeros((), jnp.int32)
  return TrainState(zero, params, tx.init(params), train_rng, zero, zero)


def state_spec(model_cfg: model_lib.ModelConfig, tx: optax.GradientTransformation,
               mesh: Mesh, rules: sharding_lib.Rules = sharding_lib.DEFAULT_RULES
               ) -> StateSpec:
  """Shapes and shardings of the train state, computed without allocating it."""
  abstract_model = nnx.eval_shape(
      lambda: model_lib.Transformer(model_cfg, rngs=nnx.Rngs(0)))
  graphdef, abstract_vars = nnx.split(abstract_model)
  axes = sharding_lib.logical_axes(abstract_vars)
  shapes = jax.eval_shape(functools.partial(_init_state, model_cfg, tx), 0)
  params_sh = sharding_lib.param_shardings(axes, shapes.params, mesh, rules)
  replicated = sharding_lib.replicated(mesh)
  shardings = TrainState(
      step=replicated, params=params_sh,
      opt_state=sharding_lib.mirrored_shardings(shapes.opt_state, shapes.params,
                                                params_sh, mesh),
      rng=replicated, nonfinite_in_a_row=replicated, nonfinite_total=replicated)
  abstract = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)
  return StateSpec(graphdef, abstract, shardings, axes)


def create_state(spec: StateSpec, model_cfg: model_lib.ModelConfig,
                 tx: optax.GradientTransformation, seed: int) -> TrainState:
  """Initialises the state directly in its sharded layout (never whole on one device)."""
  init = jax.jit(functools.partial(_init_state, model_cfg, tx),
                 out_shardings=spec.shardings)
  return init(jnp.asarray(seed, jnp.int32))


def _tracing_mesh(mesh: Mesh | None) -> contextlib.AbstractContextManager:
  return (jax.sharding.use_abstract_mesh(mesh.abstract_mesh) if mesh is not None
          else contextlib.nullcontext())


def _loss_fn(graphdef: nnx.GraphDef, params: Any, batch: dict) -> tuple[jax.Array, tuple]:
  logits = nnx.merge(graphdef, params)(batch["inputs"])
  loss, correct, count = model_lib.loss_and_accuracy(logits, batch["targets"])
  return loss, (correct, count)


def _grads(graphdef: nnx.GraphDef, params: Any, batch: dict,
           accum_steps: int) -> tuple[jax.Array, jax.Array, Any]:
  """Mean loss, accuracy and gradients, accumulated over `accum_steps` micro-batches."""
  grad_fn = jax.value_and_grad(functools.partial(_loss_fn, graphdef), has_aux=True)
  if accum_steps == 1:
    (loss, (correct, count)), grads = grad_fn(params, batch)
    return loss, correct / count, grads

  # Micro-batch a takes rows a, a + A, a + 2A, ...: each device's contiguous block of
  # rows then holds its share of every micro-batch, so the split needs no communication.
  def split(x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]).swapaxes(0, 1)

  def body(carry: tuple, micro: dict) -> tuple[tuple, None]:
    loss_sum, correct_sum, grad_sum = carry
    (loss, (correct, count)), grads = grad_fn(params, micro)
    return (loss_sum + loss, correct_sum + correct / count,
            jax.tree.map(jnp.add, grad_sum, grads)), None

  zeros = jax.tree.map(jnp.zeros_like, params)
  (loss, acc, grads), _ = jax.lax.scan(
      body, (jnp.zeros(()), jnp.zeros(()), zeros), jax.tree.map(split, batch))
  return loss / accum_steps, acc / accum_steps, jax.tree.map(lambda g: g / accum_steps, grads)


def train_step(state: TrainState, batch: dict, *, graphdef: nnx.GraphDef,
               tx: optax.GradientTransformation, accum_steps: int,
               schedule: optax.Schedule, mesh: Mesh | None = None
               ) -> tuple[TrainState, dict]:
  """One optimizer update on a global batch; returns the new state and scalar metrics.

  With `mesh`, the forward pass is traced under it so activations keep the batch
  sharding (see `sharding.constrain_batch`).
  """
  def grad_fn(params: Any, *_: Any) -> Any:
    """Gradients of the same batch (same micro-batches) at other params, for SAM-style
    transforms; traced only if one calls it. Extra arguments are ignored (optax.contrib.sam)."""
    return _grads(graphdef, params, batch, accum_steps)[2]

  with _tracing_mesh(mesh):  # grad_fn runs inside tx.update: keep activation shardings
    loss, accuracy, grads = _grads(graphdef, state.params, batch, accum_steps)
    grad_norm = optax.tree.norm(grads)
    if isinstance(tx, optax.GradientTransformationExtraArgs):
      updates, opt_state = tx.update(grads, state.opt_state, state.params, grad_fn=grad_fn)
    else:
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)

  # The update norm catches what the first gradient cannot: a non-finite second
  # gradient or perturbation inside a SAM transform.
  update_norm = optax.tree.norm(updates)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(update_norm)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  in_a_row = jnp.where(finite, 0, state.nonfinite_in_a_row + 1)
  new_state = TrainState(
      step=state.step + 1,
      params=keep(params, state.params),
      opt_state=keep(opt_state, state.opt_state),
      rng=jax.random.split(state.rng)[0],
      nonfinite_in_a_row=in_a_row,
      nonfinite_total=state.nonfinite_total + (~finite).astype(jnp.int32))
  metrics = {"train/loss": loss, "train/accuracy": accuracy, "train/grad_norm": grad_norm,
             "train/update_norm": update_norm,
             "train/learning_rate": schedule(state.step),
             "train/update_skipped": (~finite).astype(jnp.int32),
             "nonfinite_in_a_row": in_a_row,
             **optimizers.state_metrics(new_state.opt_state)}
  return new_state, metrics


def jit_train_step(spec: StateSpec, tx: optax.GradientTransformation, mesh: Mesh,
                   accum_steps: int, schedule: optax.Schedule) -> Callable:
  step = functools.partial(train_step, graphdef=spec.graphdef, tx=tx,
                           accum_steps=accum_steps, schedule=schedule, mesh=mesh)
  batch_sh = sharding_lib.batch_sharding(mesh)
  return jax.jit(step, in_shardings=(spec.shardings, batch_sh),
                 out_shardings=(spec.shardings, sharding_lib.replicated(mesh)),
                 donate_argnums=0)


def eval_step(params: Any, batch: dict, *, graphdef: nnx.GraphDef,
              mesh: Mesh | None = None) -> dict:
  """Summed loss, correct tokens and token count (summed over batches on the host)."""
  with _tracing_mesh(mesh):
    logits = nnx.merge(graphdef, params)(batch["inputs"])
  loss, correct, count = model_lib.loss_and_accuracy(logits, batch["targets"])
  return {"loss_sum": loss * count, "correct": correct, "count": count}


def jit_eval_step(spec: StateSpec, mesh: Mesh) -> Callable:
  return jax.jit(functools.partial(eval_step, graphdef=spec.graphdef, mesh=mesh),
                 in_shardings=(spec.shardings.params, sharding_lib.batch_sharding(mesh)),
                 out_shardings=sharding_lib.replicated(mesh))


def evaluate(eval_fn: Callable, params: Any, batches: list[dict]) -> dict[str, float]:
  """Token-weighted validation loss, perplexity and accuracy over fixed batches."""
  totals = [eval_fn(params, batch) for batch in batches]
  totals = jax.device_get(totals)
  count = sum(float(t["count"]) for t in totals)
  loss = sum(float(t["loss_sum"]) for t in totals) / count
  return {"eval/loss": loss, "eval/perplexity": float(jnp.exp(loss)),
          "eval/accuracy": sum(float(t["correct"]) for t in totals) / count}
