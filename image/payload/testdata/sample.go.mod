// A hand-made go.mod with the shapes StagingReplaces must handle.
module k8s.io/kubernetes

go 1.26.0

require k8s.io/api v0.0.0 // single-line require

require (
	github.com/google/go-cmp v0.7.0
	k8s.io/apimachinery v0.0.0
	k8s.io/client-go v0.0.0 // indirect
	k8s.io/kube-openapi v0.0.0-20250910181357-589584f1c912
	k8s.io/utils v0.0.0-20251002143259-bc988d571ff4
	sigs.k8s.io/json v0.0.0-20250730193827-2d320260d730
	example.com/notk8s v0.0.0
)

replace (
	k8s.io/api => ./staging/src/k8s.io/api
	k8s.io/apimachinery => ./staging/src/k8s.io/apimachinery
	k8s.io/client-go => ./staging/src/k8s.io/client-go
	k8s.io/sample-controller v0.0.0 => ./staging/src/k8s.io/sample-controller
)
