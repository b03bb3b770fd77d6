# Latency percentiles of etcd (dashed) and ringd (solid), one panel per workload, x = connections.
# Called by perf/compare.sh:
#   gnuplot -e "dat='plot.dat'; out='X.png'; names='get put ...'; conns='16 64'; heading='...'" perf/plot.gp
# plot.dat has one block per workload (separated by two blank lines), a row per connection
# count: conns, etcd p50 p90 p99 p99.9, ringd p50 p90 p99 p99.9 (ms; NaN when missing).
n = words(names)
cols = (n > 3) ? 3 : n
rows = (n + cols - 1) / cols
set terminal pngcairo size 560*cols, 420*rows + 40 font "sans,10" noenhanced
set output out
set multiplot layout rows, cols title heading font "sans,12"
set logscale x 2
set xtics ()
do for [k=1:words(conns)] { set xtics add (word(conns, k) word(conns, k)+0) }
set logscale y 10
set format y "%g"
set xlabel "connections (watch: watchers)"
set ylabel "latency (ms)"
set grid xtics ytics mytics lc rgb "#dddddd"
set key top left font "sans,8" maxrows 4 samplen 3
set offsets graph 0.08, graph 0.08, 0, 0
set datafile missing "NaN"
array pc[4] = ["#1f77b4", "#2ca02c", "#ff7f0e", "#d62728"]
array pn[4] = ["p50", "p90", "p99", "p99.9"]
do for [i=0:n-1] {
  set title word(names, i+1) font "sans,11"
  plot for [j=1:4] dat index i using 1:(column(1+j)) with linespoints dt 2 pt 6 ps 0.8 lw 1.5 lc rgb pc[j] title "etcd ".pn[j], \
       for [j=1:4] dat index i using 1:(column(5+j)) with linespoints dt 1 pt 7 ps 0.8 lw 2 lc rgb pc[j] title "ringd ".pn[j]
}
unset multiplot
