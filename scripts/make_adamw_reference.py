#!/usr/bin/env python3
"""Print the constants that app/engine/train/optim.rs's AdamW test compares against.

torch.optim.AdamW (decoupled weight decay, bias-corrected moments, eps outside the square root) runs six
steps on two f32 parameters, with the learning rate set each step by a LambdaLR holding transformers'
cosine-with-warm-up formula (2 warm-up steps of 6, peak 1e-2): the same schedule Loft's `lr_at` computes,
so the first step runs at lr 0 and moves only the moments. The second parameter's gradients are around
1e-9, where eps = 1e-8 dominates the denominator: an eps placed inside the square root, or a bias
correction applied to eps, changes its values.

Usage: python scripts/make_adamw_reference.py      (needs torch and numpy; the CPU is enough)
Paste the printed block into the test `matches_torch_adamw_on_a_known_sequence`.
"""
import math

import numpy as np
import torch

STEPS = 6
WARMUP = 2
PEAK_LR = 1e-2
BETAS = (0.9, 0.999)
EPS = 1e-8
WEIGHT_DECAY = 0.01

P1 = [[0.5, -1.25, 2.0], [-0.75, 0.125, 1.5]]
P2 = [0.25, -0.5]
# Gradients per step, exactly representable in f32 (so both sides start from the same numbers).
G1 = [
    [[0.5, -0.25, 1.0], [0.0, 2.0, -0.125]],
    [[-1.0, 0.5, 0.25], [0.75, -1.5, 0.0625]],
    [[0.25, 0.25, -2.0], [-0.5, 1.0, 0.5]],
    [[2.0, -1.0, 0.5], [0.125, 0.0, -0.25]],
    [[-0.5, 1.5, 0.75], [1.0, -0.5, 2.0]],
    [[0.0625, -2.0, -0.5], [-1.25, 0.25, 1.0]],
]
G2 = [
    [1e-9, -3e-9],
    [2e-9, 0.0],
    [-1e-9, 4e-9],
    [5e-9, -1e-9],
    [0.0, 2e-9],
    [-3e-9, -2e-9],
]


def cosine_with_warmup(step):
    """transformers.optimization._get_cosine_schedule_with_warmup_lr_lambda (num_cycles 0.5)."""
    if step < WARMUP:
        return step / max(1, WARMUP)
    progress = (step - WARMUP) / max(1, STEPS - WARMUP)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))


def main():
    p1 = torch.tensor(P1, dtype=torch.float32, requires_grad=True)
    p2 = torch.tensor(P2, dtype=torch.float32, requires_grad=True)
    opt = torch.optim.AdamW([p1, p2], lr=PEAK_LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY,
                            foreach=False)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_with_warmup)
    lrs, after1, after2 = [], [], []
    for step in range(STEPS):
        lrs.append(opt.param_groups[0]["lr"])
        p1.grad = torch.tensor(G1[step], dtype=torch.float32)
        p2.grad = torch.tensor(G2[step], dtype=torch.float32)
        opt.step()
        sched.step()
        after1.append(p1.detach().flatten().tolist())
        after2.append(p2.detach().flatten().tolist())

    def rows(values):
        # The shortest text that reads back as the same f32 (numpy's repr), as Rust's f32 literals want.
        return ",\n".join("            [" + ", ".join(str(np.float32(v))
                                                      for v in row) + "]" for row in values)

    print(f"        // torch {torch.__version__}: AdamW(lr={PEAK_LR}, betas={BETAS}, eps={EPS}, "
          f"weight_decay={WEIGHT_DECAY}), f32")
    print("        const LRS: [f64; %d] = [%s];" % (STEPS, ", ".join(repr(lr) for lr in lrs)))
    print("        const P1_AFTER: [[f32; 6]; %d] = [\n%s,\n        ];" % (STEPS, rows(after1)))
    print("        const P2_AFTER: [[f32; 2]; %d] = [\n%s,\n        ];" % (STEPS, rows(after2)))


if __name__ == "__main__":
    main()
