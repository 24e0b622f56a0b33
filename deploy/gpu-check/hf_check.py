"""Independent check of expected.json on the device: each golden fixture through Hugging Face
transformers (fp32, on CUDA when torch sees a GPU): last logits, top-5 per position, greedy ids.
Usage: python3 hf_check.py FIXTURES_DIR OUT_JSON"""
import json, sys, time
from pathlib import Path
import torch
from transformers import AutoModelForCausalLM

root, out_path = Path(sys.argv[1]), Path(sys.argv[2])
dev = 'cuda' if torch.cuda.is_available() else 'cpu'
torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32: tf32 drifts ~3e-4
torch.backends.cudnn.allow_tf32 = False
res = {'device': dev, 'torch': torch.__version__, 'fixtures': {}}
for d in sorted(p for p in root.iterdir() if (p / 'expected.json').exists()):
    exp = json.loads((d / 'expected.json').read_text())
    t0 = time.time()
    try:
        m = AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32).to(dev).eval()
        r = {}
        for name, p in exp['prompts'].items():
            ids = torch.tensor([p['input_ids']], device=dev)
            with torch.no_grad():
                logits = m(ids).logits[0].float()
                g = m.generate(ids, max_new_tokens=len(p['greedy_ids']), do_sample=False)[0, ids.shape[1]:].tolist()
            top5 = torch.topk(logits, 5, dim=-1).indices.tolist()
            r[name] = {
                'max_abs_diff_last_logits': float((logits[-1].cpu() - torch.tensor(p['last_logits'])).abs().max()),
                'top5_equal': top5 == p['top5_ids'],
                'greedy_equal': g == p['greedy_ids'],
            }
        atol = exp['tolerances']['last_logits']['atol']
        ok = all(v['top5_equal'] and v['greedy_equal'] and v['max_abs_diff_last_logits'] <= atol for v in r.values())
        res['fixtures'][d.name] = {'ok': ok, 'atol': atol, 'prompts': r, 'seconds': round(time.time() - t0, 2)}
    except Exception as e:  # a fixture transformers cannot load is reported, not fatal
        res['fixtures'][d.name] = {'ok': False, 'error': f'{type(e).__name__}: {e}'[:500]}
    print(d.name, json.dumps(res['fixtures'][d.name])[:300], flush=True)
out_path.write_text(json.dumps(res, indent=2))
