# Accept-all consumer on Debian's ruby-nfqueue (Netfilter::Queue, an FFI binding
# of libnetfilter_queue), for bench/run.sh:  ruby accept.rb [QUEUE] [MAXLEN]
require 'nfqueue'
require 'socket'

queue = Integer(ARGV[0] || 0)
q = Netfilter::Queue.new(queue)
q.set_max_length(Integer(ARGV[1] || 1024))
# Without NETLINK_NO_ENOBUFS the first overflow of the socket makes process()
# raise Errno::ENOBUFS; set it as the other consumers do (SOL_NETLINK 270, 5).
fd = Netfilter::Queue.nfq_fd(q.instance_variable_get(:@conn_handle))
Socket.for_fd(fd).tap { |s| s.autoclose = false }.setsockopt(270, 5, 1)
q.process { Netfilter::Packet::ACCEPT }
