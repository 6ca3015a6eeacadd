#!/usr/bin/env python3
# CI: no import cycles between the broker's modules (its top-level files and
# folders; issue 11). Reads `crate::`, `super::` and `self::` paths in
# broker/src and finds strongly connected components. A folder counts as
# one module: its files may refer to each other (a session's types are
# mutually recursive: the relay, its parked form, its take-over channel).
#   .ci/import_cycles.py broker/src --modules [-v]
import re,os,sys,glob
root=sys.argv[1]  # broker/src
files={}
for f in glob.glob(root+'/**/*.rs',recursive=True):
    rel=os.path.relpath(f,root)[:-3]
    parts=rel.split('/')
    if parts[-1] in ('mod','lib'): parts=parts[:-1]
    if 'tests' in parts: continue
    files['::'.join(parts)]=f
def resolve(path):
    parts=path.split('::')
    while parts:
        k='::'.join(parts)
        if k in files: return k
        parts=parts[:-1]
    return None
edges={}
for m,f in files.items():
    s=open(f).read()
    s=re.sub(r'#\[cfg\(test\)\]\s*mod tests \{.*','',s,flags=re.S)
    s=re.sub(r'//.*','',s)
    deps=set()
    for p in re.findall(r'crate((?:::[A-Za-z_][A-Za-z0-9_]*)+)',s):
        r=resolve(p[2:])
        if r is not None and r!=m: deps.add(r)
    # super:: paths
    base=m.split('::') if m else []
    for p in re.findall(r'\bsuper((?:::[A-Za-z_][A-Za-z0-9_]*)*)',s):
        parent=base[:-1]
        r=resolve('::'.join(parent+[x for x in p.split('::') if x]) )
        if r is not None and r!=m: deps.add(r)
    for p in re.findall(r'\bself::([A-Za-z_][A-Za-z0-9_]*)',s):
        r=resolve('::'.join(base+[p]))
        if r is not None and r!=m: deps.add(r)
    # parents (mod.rs) declare children: not an import
    edges[m]={d for d in deps if not (d.startswith(m+'::') if m else True) or d==m}
    edges[m]|={d for d in deps if m and d.startswith(m+'::')}
# cycle detection ignoring parent->child edges (declarations)
def strip(m,d): return not (d.startswith(m+'::') or m=='')
g={m:{d for d in ds if strip(m,d)} for m,ds in edges.items()}
if '--modules' in sys.argv:
    top=lambda m: m.split('::')[0]
    h={}
    for m,ds in g.items():
        h.setdefault(top(m),set()).update(top(d) for d in ds if top(d)!=top(m))
    g=h
# Tarjan
idx={};low={};st=[];on=set();out=[];c=[0]
sys.setrecursionlimit(10000)
def sc(v):
    idx[v]=low[v]=c[0];c[0]+=1;st.append(v);on.add(v)
    for w in g.get(v,()):
        if w not in idx: sc(w);low[v]=min(low[v],low[w])
        elif w in on: low[v]=min(low[v],idx[w])
    if low[v]==idx[v]:
        comp=[]
        while True:
            w=st.pop();on.discard(w);comp.append(w)
            if w==v:break
        if len(comp)>1: out.append(comp)
for v in g:
    if v not in idx: sc(v)
for comp in out: print('cycle:',sorted(comp))
if '-v' in sys.argv:
    for m in sorted(g): print(m or '<lib>','->',sorted(g[m]))
sys.exit(1 if out else 0)
