// Our pause program: the first process of every pod sandbox on the local cluster's real node.
module maas.dev/hack/tools/pause

go 1.26.0
