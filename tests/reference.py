"""Float64 loop references for the losses: one anchor at a time, straight from the equations.

Slow on purpose and written without any helper from the package, so that the tests compare the
package with an independent reading of Yeh et al. (2021), Eqs. (1)-(4).
"""

import math

import torch


def _unit(z):
    return z / z.norm(dim=1, keepdim=True)


def loop_losses(z1, z2, *, tau, kind, sigma=0.5, normalize=True):
    """Per-anchor losses, anchors in the order of cat([z1, z2])."""
    z1, z2 = z1.double(), z2.double()
    if normalize:
        z1, z2 = _unit(z1), _unit(z2)
    n = z1.shape[0]
    views = (z1, z2)
    if kind == "dclw":
        c = [float(z1[i] @ z2[i]) for i in range(n)]
        mean_exp = sum(math.exp(ci / sigma) for ci in c) / n
        w = [2 - math.exp(ci / sigma) / mean_exp for ci in c]
    else:
        w = [1.0] * n
    out = []
    for k in (0, 1):
        for i in range(n):
            anchor = views[k][i]
            s_pos = float(z1[i] @ z2[i]) / tau
            u = 0.0  # Eq. (2): both views, every j != i
            for view in views:
                for j in range(n):
                    if j != i:
                        u += math.exp(float(anchor @ view[j]) / tau)
            if kind == "infonce":
                out.append(-s_pos + math.log(math.exp(s_pos) + u))
            else:
                out.append(-w[i] * s_pos + math.log(u))
    return torch.tensor(out, dtype=torch.float64)


def loop_coupling(z1, z2, *, tau):
    """q_B of every anchor, Eq. (4), by loops."""
    z1, z2 = _unit(z1.double()), _unit(z2.double())
    n = z1.shape[0]
    views = (z1, z2)
    q = []
    for k in (0, 1):
        for i in range(n):
            e_pos = math.exp(float(z1[i] @ z2[i]) / tau)
            u = sum(
                math.exp(float(views[k][i] @ view[j]) / tau)
                for view in views
                for j in range(n)
                if j != i
            )
            q.append(1 - e_pos / (e_pos + u))
    return torch.tensor(q, dtype=torch.float64)
