import http.client, sys, time
port=int(sys.argv[1]); n=200
c=http.client.HTTPConnection("127.0.0.1", port)
t=time.time()
for i in range(n):
    c.request("GET", f"/p{i}"); r=c.getresponse(); r.read()
el=time.time()-t
print(f"{n} sequential misses on one client connection: {el:.2f} s, {el/n*1000:.2f} ms each")
