// Command kube is one multi-call binary holding the Kubernetes components
// bosun's local cluster runs. It picks the component from the name it was
// called by (a symlink such as kube-apiserver -> kube) or, when called as
// "kube", from its first argument: `kube kubectl version --client`.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	_ "time/tzdata" // for CronJob time zone support, as upstream's binaries do

	"github.com/spf13/cobra"

	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric

	_ "k8s.io/client-go/plugin/pkg/client/auth" // kubectl's client auth plugins
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"

	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

// Each entry runs one component the way its upstream main() does and
// returns the process exit code.
var components = map[string]func() int{
	"kube-apiserver": func() int { return cli.Run(apiserver.NewAPIServerCommand()) },
	"kube-controller-manager": func() int {
		return cli.Run(controllermanager.NewControllerManagerCommand())
	},
	"kube-scheduler": func() int { return cli.Run(scheduler.NewSchedulerCommand()) },
	"kubelet":        func() int { return cli.Run(kubelet.NewKubeletCommand(context.Background())) },
	"kube-proxy":     func() int { return cli.Run(proxy.NewProxyCommand()) },
	"kubectl":        runKubectl,
}

func runKubectl() int {
	// As upstream's cmd/kubectl: set verbosity before the command is built.
	logs.GlogSetter(kubectlcmd.GetLogVerbosity(os.Args)) // nolint:errcheck
	var command *cobra.Command = kubectlcmd.NewDefaultKubectlCommand()
	if err := cli.RunNoErrOutput(command); err != nil {
		kubectlutil.CheckErr(err)
	}
	return 0
}

func names() []string {
	out := make([]string, 0, len(components))
	for name := range components {
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}

func usage() {
	fmt.Fprintf(os.Stderr, "usage: kube <component> [flags]\n  or call it through a link named after the component\ncomponents: %s\n",
		strings.Join(names(), ", "))
}

func main() {
	name := filepath.Base(os.Args[0])
	if run, ok := components[name]; ok {
		os.Exit(run())
	}
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	switch os.Args[1] {
	case "-h", "--help", "help":
		usage()
		os.Exit(0)
	}
	run, ok := components[os.Args[1]]
	if !ok {
		fmt.Fprintf(os.Stderr, "kube: unknown component %q\n", os.Args[1])
		usage()
		os.Exit(2)
	}
	// The component sees itself as if called by its own name.
	os.Args = append([]string{os.Args[1]}, os.Args[2:]...)
	os.Exit(run())
}
