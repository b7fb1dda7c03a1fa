"""Policies: nets, samplers (one time-grid object), flow / shortcut / diffusion / Gaussian.

The seam between nets and samplers (shapes: B batch, Tp predicted steps, Da action dims,
C conditioning features, K denoising steps):

    denoiser(x[B, Tp, Da], t[B], cond[B, C], d[B] | None) -> [B, Tp, Da]
        flow: the velocity v(x, t) with t in [0, 1] (0 = noise, 1 = action), d the step
        size (shortcut models; None otherwise); diffusion: the predicted noise eps, with t
        the diffusion timestep (float tensor holding integers).
    noise_head(x[B, Tp, Da], t[B], cond[B, C]) -> raw [B, Tp, Da]
        unbounded output that the sampler maps into [sigma_min, sigma_max] (ReinFlow /
        Flow-Noise learned exploration noise).

A sampler owns the time grid and every per-step transition N(mean, std^2):
    chain = sampler.sample(denoise_fn, noise_fn, shape, generator)      -> Chain
    step_log_probs = sampler.log_prob(denoise_fn, noise_fn, chain)      -> [B, K]
where denoise_fn(x, t, d) and noise_fn(x, t) are closures over the conditioning.
"""
