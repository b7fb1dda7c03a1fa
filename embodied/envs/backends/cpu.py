"""The CPU default: many MjData stepped together by MuJoCo's own threaded batch.

Fields are exposed as torch tensors that are live, zero-copy views of the batch's arrays,
so a task reads `sim.qpos` or `sim.field("site_xpos")` with no Python loop over envs.
"""

from __future__ import annotations

import os
import warnings

import mujoco
import numpy as np
import torch
from mujoco import batch as mjbatch

from embodied.core.errors import ConfigError


class CpuBatchBackend:
    """`num_envs` simulations of one MjModel on `nthread` threads (0: all cores).

    `persistent` keeps one MjData per env, whose derived fields then outlive the call
    (get_data) and from whose forward stages the next step continues. Without it one
    MjData per thread serves every env and stays in cache; the results are the same.
    """

    device = torch.device("cpu")

    def __init__(self, model: mujoco.MjModel, num_envs: int, nthread: int = 0,
                 persistent: bool = True) -> None:
        if num_envs < 1:
            raise ConfigError(f"num_envs must be >= 1, got {num_envs}")
        self.model = model
        self.num_envs = num_envs
        self.nthread = nthread or os.cpu_count() or 1
        self._batch = mjbatch.Batch(model, num_envs, nthread=self.nthread,
                                    persistent=persistent)
        self._views: dict[str, torch.Tensor] = {}
        # The integration state (time, qpos0, zero velocities and warmstart, ctrl, mocap,
        # ...) mj_resetData gives an env; reset() writes it into the envs' state rows.
        self._batch.reset(stage=int(mujoco.mjtStage.mjSTAGE_NONE))
        self._initial_state = self._batch.state[0].copy()

    def field(self, name: str) -> torch.Tensor:
        """Live (num_envs, ...) tensor over an MjData field (float64 for mjtNum fields).

        State fields (qpos, qvel, ctrl, act, mocap_pos, ...) are writable views; derived
        fields (xpos, site_xpos, sensordata, cfrc_ext, ...) are refreshed in place after
        every step/forward/reset call and must be treated as read-only.
        """
        view = self._views.get(name)
        if view is None:
            array = self._batch.bind(name)
            with warnings.catch_warnings():
                # Derived fields are read-only numpy arrays; torch warns about aliasing them.
                warnings.simplefilter("ignore", UserWarning)
                view = torch.from_numpy(array)
            self._views[name] = view
        return view

    def step(self, nstep: int, stage: int = int(mujoco.mjtStage.mjSTAGE_NONE)) -> None:
        """nstep substeps of every env, then `stage`. A failure raises
        mujoco.batch.SimulationError naming the envs (Batch checks every call itself)."""
        self._batch.step(nstep=nstep, stage=stage)

    def reset(self, ids: np.ndarray) -> None:
        """Reset `ids` to the model defaults without computing anything (write state next).

        Only the state rows are written: a call loads an env's row, so this leaves what
        Batch.reset does, without its per-call checks and mj_resetData clearing the env's
        whole MjData (hundreds of KB, cold after a step), which together cost more than the
        reset's forward pass. The defaults are the nominal model's: randomising qpos0 or a
        mocap body's pose per env would need Batch.reset.
        """
        self._batch.state[ids] = self._initial_state

    def forward(self, ids: np.ndarray | None = None) -> None:
        self._batch.forward(ids=ids)

    def model_field(self, name: str) -> torch.Tensor:
        """Live, writable (num_envs, ...) tensor of per-env values of a model field, e.g.
        `body_mass`, `geom_friction`, `opt.timestep` (domain randomisation).

        The first call gives every env its own copy of the model's value; the model the
        backend was built with keeps the nominal one. After writing a field mj_setConst
        reads (`needs_set_const`), call `set_const` for the envs written.
        """
        key = "model." + name
        view = self._views.get(key)
        if view is None:
            if name not in mjbatch.MODEL_FIELDS:
                raise ValueError(f"{name!r} is not a per-env model field of mujoco.batch; "
                                 "see mujoco.batch.MODEL_FIELDS")
            view = torch.from_numpy(self._batch.expand(name))
            self._views[key] = view
        return view

    def timestep(self) -> torch.Tensor | float:
        """Each env's physics timestep [N] once domain randomisation made it per-env, else
        the model's (tasks that differentiate positions divide by it times frame_skip)."""
        view = self._views.get("model.opt.timestep")
        return float(self.model.opt.timestep) if view is None else view.reshape(-1)

    @staticmethod
    def needs_set_const(name: str) -> bool:
        """Whether constants derived by mj_setConst (subtree masses, inverse weights, ...)
        depend on model field `name`."""
        return name.startswith("opt.") or name in mujoco.MjModel._setconst_inputs

    def set_const(self, ids: torch.Tensor | np.ndarray) -> None:
        """Recompute the derived constants of envs `ids` from their model fields."""
        self._batch.set_const(np.asarray(torch.as_tensor(ids).cpu(), dtype=np.int64))

    def get_data(self, env: int, data: mujoco.MjData | None = None) -> mujoco.MjData:
        """One env's MjData copied into `data` (or a new one), e.g. to render it."""
        return self._batch.get_data(env, data)

    def get_model(self, env: int) -> mujoco.MjModel:
        return self._batch.get_model(env)
