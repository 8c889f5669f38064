import time, torch, torch.nn.functional as F
torch.manual_seed(0)
B,H,N,D = 4,4,5376,32
q,k,v = (torch.randn(B,H,N,D) for _ in range(3))
def t(f, n=2):
    f(); s=time.perf_counter()
    for _ in range(n): f()
    return (time.perf_counter()-s)/n
def chunked(q,k,v,dt,chunk=1344):
    qb,kb,vb = (x.reshape(B*H,N,D).to(dt) for x in (q,k,v))
    kt = kb.transpose(1,2).contiguous()
    out=[]
    for i in range(0,N,chunk):
        s = torch.bmm(qb[:,i:i+chunk], kt)
        p = (s.float() * D**-0.5).softmax(-1).to(dt)
        out.append(torch.bmm(p, vb))
    return torch.cat(out,1).reshape(B,H,N,D).float()
ref = F.scaled_dot_product_attention(q,k,v)
fl = 4*B*H*N*N*D/1e9
with torch.no_grad():
    r=t(lambda: F.scaled_dot_product_attention(q,k,v)); print(f"sdpa fp32 fwd {r:.3f}s {fl/r:.0f} GFLOP/s")
    qb,kb,vb=q.bfloat16(),k.bfloat16(),v.bfloat16()
    r=t(lambda: F.scaled_dot_product_attention(qb,kb,vb)); print(f"sdpa bf16 fwd {r:.3f}s {fl/r:.0f} GFLOP/s")
    for dt in (torch.float32, torch.bfloat16):
        r=t(lambda: chunked(q,k,v,dt)); print(f"chunked {dt} fwd {r:.3f}s {fl/r:.0f} GFLOP/s err {(chunked(q,k,v,dt)-ref).abs().max().item():.4f}")
    a=torch.randn(2048,2048); ab=a.bfloat16()
    print("GFLOP/s fp32 mm", 2*2048**3/t(lambda: a@a)/1e9, "bf16 mm", 2*2048**3/t(lambda: ab@ab)/1e9)
