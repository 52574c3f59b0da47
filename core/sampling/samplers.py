"""The sampler table of WebUI 1.10: names, aliases, options, and old infotext names mapped back.

Order and options follow the WebUI's all_samplers (k-diffusion samplers, then the timestep samplers, then
LCM). ``options`` keeps the WebUI's keys: 'scheduler' (the Schedule type "Automatic" means, internal
name), 'second_order', 'brownian_noise', 'uses_ensd', 'discard_next_to_last_sigma', 'solver_type'.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core.sampling import dpm_solver, k_samplers, lcm, timestep_samplers
from core.sampling.schedulers import SCHEDULERS, find_scheduler

KIND_KDIFFUSION = "k-diffusion"
KIND_TIMESTEPS = "timesteps"
KIND_LCM = "lcm"

# Which user settings the WebUI forwards to each k-diffusion function (sampler_extra_params).
CHURN_PARAMS = ("s_churn", "s_tmin", "s_tmax", "s_noise")
NOISE_PARAMS = ("s_noise",)

ETA_ANCESTRAL_DEFAULT = 1.0  # setting "Eta for k-diffusion samplers"
ETA_DDIM_DEFAULT = 0.0  # setting "Eta for DDIM"


@dataclass(frozen=True)
class SamplerInfo:
    """One entry of the sampler dropdown.

    ``function(model, x, sigmas, extra_args=, callback=, noise_sampler=, **kwargs)`` runs the sampling.
    ``fixed_kwargs`` are always passed (e.g. solver_type='heun'); ``extra_params`` name the user settings
    (s_churn, s_tmin, s_tmax, s_noise) the WebUI forwards; ``uses_eta``/``eta_default`` tell whether an eta
    is passed and what it is when the user leaves it unset.
    """

    name: str
    aliases: tuple[str, ...]
    function: Callable[..., Any]
    options: dict[str, Any] = field(default_factory=dict)
    kind: str = KIND_KDIFFUSION
    uses_eta: bool = False
    eta_default: float = ETA_ANCESTRAL_DEFAULT
    extra_params: tuple[str, ...] = ()
    fixed_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def default_scheduler(self) -> str | None:
        """Internal scheduler name used under "Automatic" (None: the model's uniform sigmas)."""
        return self.options.get("scheduler")

    @property
    def second_order(self) -> bool:
        return bool(self.options.get("second_order", False))

    @property
    def brownian_noise(self) -> bool:
        return bool(self.options.get("brownian_noise", False))

    @property
    def uses_ensd(self) -> bool:
        return bool(self.options.get("uses_ensd", False))

    @property
    def discard_penultimate(self) -> bool:
        return bool(self.options.get("discard_next_to_last_sigma", False))

    @property
    def uses_schedule_type(self) -> bool:
        """Timestep samplers follow their own timesteps; the Schedule type does not apply to them."""
        return self.kind != KIND_TIMESTEPS


def _k(name, aliases, function, options=None, *, eta=False, extra=(), fixed=None) -> SamplerInfo:
    return SamplerInfo(name, tuple(aliases), function, dict(options or {}), KIND_KDIFFUSION, eta,
                       ETA_ANCESTRAL_DEFAULT, tuple(extra), dict(fixed or {}))


SAMPLERS: list[SamplerInfo] = [
    _k("DPM++ 2M", ["k_dpmpp_2m"], k_samplers.sample_dpmpp_2m, {"scheduler": "karras"}),
    _k("DPM++ SDE", ["k_dpmpp_sde"], k_samplers.sample_dpmpp_sde,
       {"scheduler": "karras", "second_order": True, "brownian_noise": True}, eta=True, extra=NOISE_PARAMS),
    _k("DPM++ 2M SDE", ["k_dpmpp_2m_sde"], k_samplers.sample_dpmpp_2m_sde,
       {"scheduler": "exponential", "brownian_noise": True}, eta=True, extra=NOISE_PARAMS),
    _k("DPM++ 2M SDE Heun", ["k_dpmpp_2m_sde_heun"], k_samplers.sample_dpmpp_2m_sde,
       {"scheduler": "exponential", "brownian_noise": True, "solver_type": "heun"}, eta=True, extra=NOISE_PARAMS,
       fixed={"solver_type": "heun"}),
    _k("DPM++ 2S a", ["k_dpmpp_2s_a"], k_samplers.sample_dpmpp_2s_ancestral,
       {"scheduler": "karras", "uses_ensd": True, "second_order": True}, eta=True, extra=NOISE_PARAMS),
    _k("DPM++ 3M SDE", ["k_dpmpp_3m_sde"], k_samplers.sample_dpmpp_3m_sde,
       {"scheduler": "exponential", "discard_next_to_last_sigma": True, "brownian_noise": True}, eta=True,
       extra=NOISE_PARAMS),
    _k("Euler a", ["k_euler_a", "k_euler_ancestral"], k_samplers.sample_euler_ancestral, {"uses_ensd": True},
       eta=True),
    _k("Euler", ["k_euler"], k_samplers.sample_euler, {}, extra=CHURN_PARAMS),
    _k("LMS", ["k_lms"], k_samplers.sample_lms, {}),
    _k("Heun", ["k_heun"], k_samplers.sample_heun, {"second_order": True}, extra=CHURN_PARAMS),
    _k("DPM2", ["k_dpm_2"], k_samplers.sample_dpm_2,
       {"scheduler": "karras", "discard_next_to_last_sigma": True, "second_order": True}, extra=CHURN_PARAMS),
    _k("DPM2 a", ["k_dpm_2_a"], k_samplers.sample_dpm_2_ancestral,
       {"scheduler": "karras", "discard_next_to_last_sigma": True, "uses_ensd": True, "second_order": True},
       eta=True, extra=NOISE_PARAMS),
    _k("DPM fast", ["k_dpm_fast"], dpm_solver.sample_dpm_fast, {"uses_ensd": True}, eta=True, extra=NOISE_PARAMS),
    _k("DPM adaptive", ["k_dpm_ad"], dpm_solver.sample_dpm_adaptive, {"uses_ensd": True}, eta=True),
    _k("Restart", ["restart"], k_samplers.sample_restart, {"scheduler": "karras", "second_order": True}),
    SamplerInfo("DDIM", ("ddim",), timestep_samplers.sample_ddim, {}, KIND_TIMESTEPS, True, ETA_DDIM_DEFAULT),
    SamplerInfo("DDIM CFG++", ("ddim_cfgpp",), timestep_samplers.sample_ddim_cfgpp, {}, KIND_TIMESTEPS, True,
                ETA_DDIM_DEFAULT),
    SamplerInfo("PLMS", ("plms",), timestep_samplers.sample_plms, {}, KIND_TIMESTEPS),
    SamplerInfo("UniPC", ("unipc",), timestep_samplers.sample_unipc, {}, KIND_TIMESTEPS),
    SamplerInfo("LCM", ("k_lcm",), lcm.sample_lcm, {}, KIND_LCM),
]

DEFAULT_SAMPLER = SAMPLERS[0]
_BUILTIN_COUNT = len(SAMPLERS)  # the WebUI's; extensions' samplers come after them

# Aliases of the samplers that existed before 1.9 folded the schedule into "Schedule type".
LEGACY_ALIAS_SUFFIXES = {"_ka": "karras", "_exp": "exponential"}


def sampler_names() -> list[str]:
    return [s.name for s in SAMPLERS]


def register_sampler(info: SamplerInfo) -> SamplerInfo:
    """Add a sampler (an extension's) after the WebUI's; ValueError when it cannot be told apart.

    ``find_sampler`` matches names and aliases case-insensitively, and ``split_sampler_name``
    reads "<sampler> <schedule>", so a name or alias that equals another one in any case, or a
    name that ends in a Schedule type ("My Karras"), would be found as something else: refused.
    """
    if not isinstance(info, SamplerInfo):
        raise ValueError(f"a sampler is a core.sampling.samplers.SamplerInfo, not {type(info).__name__}")
    if not info.name or info.name != info.name.strip():
        raise ValueError(f"sampler name {info.name!r} is empty or has spaces around it")
    if not callable(info.function):
        raise ValueError(f"sampler {info.name!r}: function is not callable")
    if info.kind not in (KIND_KDIFFUSION, KIND_TIMESTEPS, KIND_LCM):
        raise ValueError(f"sampler {info.name!r}: kind {info.kind!r} is not one of "
                         f"{KIND_KDIFFUSION}, {KIND_TIMESTEPS}, {KIND_LCM}")
    taken = {n.lower(): s.name for s in SAMPLERS for n in (s.name, *s.aliases)}
    for name in (info.name, *info.aliases):
        if name.lower() in taken:
            raise ValueError(f"sampler name {name!r} is taken by the sampler {taken[name.lower()]!r}")
    base, schedule = _split_scheduler_suffix(info.name)
    if schedule is not None:
        raise ValueError(f"sampler name {info.name!r} ends in a Schedule type; it would read as "
                         f"{base!r} with that schedule")
    SAMPLERS.append(info)
    return info


def unregister_sampler(name: str) -> None:
    """Remove a sampler ``register_sampler`` added (the WebUI's own cannot be removed)."""
    builtin = SAMPLERS[:_BUILTIN_COUNT]
    for index, info in enumerate(SAMPLERS):
        if info.name == name:
            if info in builtin:
                raise ValueError(f"{name!r} is a built-in sampler")
            del SAMPLERS[index]
            return


def find_sampler(name: str | None) -> SamplerInfo | None:
    """Exact name first, then a case-insensitive name or alias (the WebUI's samplers_map)."""
    if not name:
        return None
    for info in SAMPLERS:
        if info.name == name:
            return info
    lowered = name.lower()
    for info in SAMPLERS:
        if lowered == info.name.lower() or lowered in (a.lower() for a in info.aliases):
            return info
    return None


def _split_scheduler_suffix(name: str) -> tuple[str, str | None]:
    """"DPM++ 2M SDE Karras" -> ("DPM++ 2M SDE", "karras"), by label, internal name or alias."""
    for scheduler in SCHEDULERS:
        for option in (scheduler.label, scheduler.name, *scheduler.aliases):
            if name.endswith(" " + option):
                return name[: -(len(option) + 1)], scheduler.name
    return name, None


def _split_legacy_alias(name: str) -> tuple[SamplerInfo | None, str | None]:
    """"k_dpmpp_2m_ka" -> (DPM++ 2M, "karras")."""
    for suffix, scheduler in LEGACY_ALIAS_SUFFIXES.items():
        if name.lower().endswith(suffix):
            info = find_sampler(name[: -len(suffix)])
            if info is not None:
                return info, scheduler
    return None, None


def split_sampler_name(
    name: str | None, scheduler: str | None = None, *, convert_automatic: bool = True
) -> tuple[str, str]:
    """(sampler, Schedule type label) for a sampler name as WebUI 1.10 reads one
    (``sd_samplers.get_sampler_and_scheduler``, used for pasted infotext and by the API).

    - A schedule written after the name ("DPM++ 2M Karras", "Euler SGMUniform", "LMS karras": a
      label, internal name or alias, as written) is split off and wins over ``scheduler``.
    - The sampler is found by name or alias, case-insensitively (the WebUI's ``samplers_map``),
      including the pre-1.9 aliases with a schedule on them ("k_dpmpp_2m_ka"), and comes back under
      its own name. An unknown sampler comes back as written, less the schedule: callers that need
      a real one check it with :func:`find_sampler`. No name at all means the first sampler.
    - ``scheduler`` is a label, internal name or alias; unknown or missing means "Automatic".
    - With ``convert_automatic`` a schedule equal to the sampler's own default becomes "Automatic".
    """
    found = find_scheduler(scheduler) or SCHEDULERS[0]
    base, suffix_scheduler = _split_scheduler_suffix(name or DEFAULT_SAMPLER.name)
    if suffix_scheduler is not None:
        found = find_scheduler(suffix_scheduler) or found
    info = find_sampler(base)
    if info is None:
        info, alias_scheduler = _split_legacy_alias(base)
        if alias_scheduler is not None:
            found = find_scheduler(alias_scheduler) or found
    if info is None:
        return base, found.label
    if convert_automatic and info.default_scheduler == found.name:
        found = SCHEDULERS[0]
    return info.name, found.label
