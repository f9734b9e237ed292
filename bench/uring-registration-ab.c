// A/B of io_uring's registered ring fd (io_uring_register_ring_fd, IORING_ENTER_REGISTERED_RING)
// and registered files (io_uring_register_files, IOSQE_FIXED_FILE), bare, outside the relay
// (issue 16: each is kept in the relay only if it pays). Two loops, as the io_uring driver runs:
//   drain: N 20-byte datagrams queued on a loopback UDP socket, then drained by one multishot
//          recv (MSG_TRUNC, provided buffers of 8193 bytes) waiting for 32 completions a time;
//   send:  N/2 sends of 1400 bytes to a connected loopback socket, 32 per io_uring_enter.
// Figure: CPU time of the thread (CLOCK_THREAD_CPUTIME_ID, user + system) per datagram or send;
// the four variants run interleaved in every round; medians over the rounds. A fifth drain in
// every round uses multishot recvmsg (no name, no control data) instead of recv: the receive
// the io_uring driver used before issue 16.
//
//   cc -O2 bench/uring-registration-ab.c -o /tmp/uring-registration-ab -luring
//   /tmp/uring-registration-ab [rounds=7] [N=200000]
//
// Needs liburing >= 2.3 and Linux >= 6.0 (multishot recv); CAP_NET_ADMIN for the 256 MiB
// SO_RCVBUFFORCE (else the socket keeps its default and N must fit in it).
#define _GNU_SOURCE
#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sys/mman.h>
#include <unistd.h>
#include <time.h>
#define NB 1024
#define BL 8193
static double cpu(void){struct timespec t; clock_gettime(CLOCK_THREAD_CPUTIME_ID,&t); return t.tv_sec*1e9+t.tv_nsec;}
static int enter(struct io_uring*r,unsigned sub,unsigned wait,int reg){
  unsigned flags=IORING_ENTER_GETEVENTS; int fd=r->ring_fd;
  if(reg){flags|=IORING_ENTER_REGISTERED_RING; fd=r->enter_ring_fd;}
  return syscall(__NR_io_uring_enter,fd,sub,wait,flags,NULL,_NSIG/8);
}
static void submit_pending(struct io_uring*r){ struct io_uring_sq*sq=&r->sq; unsigned tail=sq->sqe_tail; if(sq->sqe_head!=tail){sq->sqe_head=tail; io_uring_smp_store_release(sq->ktail,tail);} }
static unsigned topub(struct io_uring*r){ return r->sq.sqe_tail - io_uring_smp_load_acquire(r->sq.khead); }
double drain_op(int regring,int fixed,int n,int use_recvmsg){
  struct io_uring ring; struct io_uring_params p={0}; p.flags=IORING_SETUP_SINGLE_ISSUER|IORING_SETUP_DEFER_TASKRUN|IORING_SETUP_CQSIZE; p.cq_entries=4096;
  if(io_uring_queue_init_params(64,&ring,&p)){perror("init");exit(1);}
  if(regring && io_uring_register_ring_fd(&ring)!=1){printf("regring failed\n");exit(1);}
  void*rm=mmap(0,NB*16,PROT_READ|PROT_WRITE,MAP_ANONYMOUS|MAP_PRIVATE,-1,0);
  char*bufs=mmap(0,(size_t)NB*8256,PROT_READ|PROT_WRITE,MAP_ANONYMOUS|MAP_PRIVATE,-1,0);
  struct io_uring_buf_reg reg={0}; reg.ring_addr=(unsigned long)rm; reg.ring_entries=NB; reg.bgid=0;
  if(io_uring_register_buf_ring(&ring,&reg,0)){printf("reg\n");exit(1);}
  struct io_uring_buf_ring*br=rm; io_uring_buf_ring_init(br);
  for(int i=0;i<NB;i++) io_uring_buf_ring_add(br,bufs+(size_t)i*8256,BL,i,NB-1,i);
  io_uring_buf_ring_advance(br,NB);
  int s=socket(AF_INET,SOCK_DGRAM,0); int big=256<<20; setsockopt(s,SOL_SOCKET,SO_RCVBUFFORCE,&big,sizeof big);
  struct sockaddr_in a={0}; a.sin_family=AF_INET; a.sin_addr.s_addr=htonl(0x7f000001);
  bind(s,(void*)&a,sizeof a); socklen_t l=sizeof a; getsockname(s,(void*)&a,&l);
  int c=socket(AF_INET,SOCK_DGRAM,0); connect(c,(void*)&a,sizeof a);
  char msg[20]; memset(msg,'x',sizeof msg);
  for(int i=0;i<n;i++) if(send(c,msg,sizeof msg,0)<0){perror("send");exit(1);}
  int fd=s; if(fixed){ if(io_uring_register_files(&ring,&s,1)){printf("files\n");exit(1);} fd=0; }
  double t0=cpu(); int got=0;
  int armed=0;
  while(got<n){
    if(!armed){ struct io_uring_sqe*sqe=io_uring_get_sqe(&ring);
      static struct msghdr header;
      if(use_recvmsg) io_uring_prep_recvmsg_multishot(sqe,fd,&header,0); else io_uring_prep_recv_multishot(sqe,fd,NULL,0,MSG_TRUNC); sqe->flags|=IOSQE_BUFFER_SELECT|(fixed?IOSQE_FIXED_FILE:0); sqe->buf_group=0; armed=1; }
    submit_pending(&ring);
    enter(&ring,topub(&ring),32,regring);
    unsigned head; struct io_uring_cqe*cqe; int k=0;
    io_uring_for_each_cqe(&ring,head,cqe){ k++;
      if(cqe->res>0 && (cqe->flags&IORING_CQE_F_BUFFER)){ got++; int bid=cqe->flags>>16; io_uring_buf_ring_add(br,bufs+(size_t)bid*8256,BL,bid,NB-1,0); io_uring_buf_ring_advance(br,1);} 
      if(!(cqe->flags&IORING_CQE_F_MORE)) armed=0;
    }
    io_uring_cq_advance(&ring,k);
  }
  double t=cpu()-t0;
  io_uring_queue_exit(&ring); close(s); close(c); munmap(rm,NB*16); munmap(bufs,(size_t)NB*8256);
  return t/n;
}
double drain(int regring,int fixed,int n){ return drain_op(regring,fixed,n,0); }
double sends(int regring,int fixed,int n){
  struct io_uring ring; struct io_uring_params p={0}; p.flags=IORING_SETUP_SINGLE_ISSUER|IORING_SETUP_DEFER_TASKRUN;
  if(io_uring_queue_init_params(64,&ring,&p)){perror("init");exit(1);}
  if(regring && io_uring_register_ring_fd(&ring)!=1){printf("regring failed\n");exit(1);}
  int s=socket(AF_INET,SOCK_DGRAM,0);
  struct sockaddr_in a={0}; a.sin_family=AF_INET; a.sin_addr.s_addr=htonl(0x7f000001);
  bind(s,(void*)&a,sizeof a); socklen_t l=sizeof a; getsockname(s,(void*)&a,&l);
  int c=socket(AF_INET,SOCK_DGRAM,0); connect(c,(void*)&a,sizeof a);
  int fd=c; if(fixed){ if(io_uring_register_files(&ring,&c,1)){printf("files\n");exit(1);} fd=0; }
  static char msg[1400]; memset(msg,'x',sizeof msg);
  double t0=cpu(); int done=0;
  while(done<n){
    for(int i=0;i<32;i++){ struct io_uring_sqe*sqe=io_uring_get_sqe(&ring); io_uring_prep_send(sqe,fd,msg,sizeof msg,0); if(fixed) sqe->flags|=IOSQE_FIXED_FILE; }
    submit_pending(&ring);
    enter(&ring,topub(&ring),32,regring);
    unsigned head; struct io_uring_cqe*cqe; int k=0;
    io_uring_for_each_cqe(&ring,head,cqe){ k++; }
    io_uring_cq_advance(&ring,k); done+=k;
    // keep the receiver from filling: drain it outside the timed thread's kernel work? no: drops are fine
  }
  double t=cpu()-t0;
  io_uring_queue_exit(&ring); close(s); close(c);
  return t/n;
}
static int cmp(const void*a,const void*b){double x=*(double*)a,y=*(double*)b;return x<y?-1:x>y;}
int main(int argc,char**argv){
  int rounds=argc>1?atoi(argv[1]):7, n=argc>2?atoi(argv[2]):200000;
  const char*names[4]={"plain","regring","fixed","both"};
  double d[4][64], s[4][64], m[64];
  for(int r=0;r<rounds;r++){ for(int v=0;v<4;v++){ d[v][r]=drain(v&1,v>>1,n); s[v][r]=sends(v&1,v>>1,n/2); } m[r]=drain_op(0,0,n,1); }
  qsort(m,rounds,sizeof(double),cmp);
  for(int v=0;v<4;v++){ qsort(d[v],rounds,sizeof(double),cmp); qsort(s[v],rounds,sizeof(double),cmp);
    printf("%-8s drain ns/datagram median %.1f (min %.1f max %.1f)   send ns/packet median %.1f (min %.1f max %.1f)\n",names[v],d[v][rounds/2],d[v][0],d[v][rounds-1],s[v][rounds/2],s[v][0],s[v][rounds-1]); }
  printf("recvmsg  drain ns/datagram median %.1f (min %.1f max %.1f)   (the plain drain with multishot recvmsg, the driver's receive before issue 16)\n",m[rounds/2],m[0],m[rounds-1]);
  return 0;
}
