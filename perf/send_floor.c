// perf/send_floor.c: the floor of a fan-out on this machine. One 256-byte send on each of N
// accepted loopback TCP sockets, from T threads (N/T each), nobody reading; ROUNDS times.
// gcc -O2 -pthread perf/send_floor.c -o /tmp/send_floor && /tmp/send_floor 9900 2 3
// (9,900: a pair of descriptors per connection in one process, under a 20,000 open-file limit.)
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <pthread.h>
#include <time.h>
#include <arpa/inet.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
static int *srv; static int n, t; static char buf[256];
static double now(){struct timespec ts;clock_gettime(CLOCK_MONOTONIC,&ts);return ts.tv_sec*1e3+ts.tv_nsec/1e6;}
static void *run(void *a){long k=(long)a; for(int i=k;i<n;i+=t){ if(send(srv[i],buf,sizeof buf,MSG_DONTWAIT|MSG_NOSIGNAL)!=sizeof buf) perror("send");} return 0;}
int main(int argc,char**argv){ n=atoi(argv[1]); t=atoi(argv[2]); int rounds=atoi(argv[3]);
 memset(buf,'x',sizeof buf);
 int l=socket(AF_INET,SOCK_STREAM,0); struct sockaddr_in a={0}; a.sin_family=AF_INET; a.sin_addr.s_addr=htonl(0x7f000001);
 bind(l,(void*)&a,sizeof a); socklen_t al=sizeof a; getsockname(l,(void*)&a,&al); listen(l,4096);
 int *cli=malloc(n*sizeof(int)); srv=malloc(n*sizeof(int));
 for(int i=0;i<n;i++){cli[i]=socket(AF_INET,SOCK_STREAM,0); int one=1; if(connect(cli[i],(void*)&a,sizeof a)) {perror("connect");return 1;} srv[i]=accept(l,0,0); setsockopt(srv[i],IPPROTO_TCP,TCP_NODELAY,&one,sizeof one);}
 char rb[4096];
 for(int r=0;r<rounds;r++){ double t0=now(); pthread_t th[16]; for(long k=0;k<t;k++) pthread_create(&th[k],0,run,(void*)k); for(int k=0;k<t;k++) pthread_join(th[k],0);
   printf("%d sends from %d threads: %.1f ms (%.2f us per send per thread)\n", n, t, now()-t0, (now()-t0)*1000*t/n);
   for(int i=0;i<n;i++) recv(cli[i],rb,sizeof rb,MSG_DONTWAIT); }
 return 0; }
