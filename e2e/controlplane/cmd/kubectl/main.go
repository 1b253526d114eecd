// Command kubectl is upstream's kubectl, built from the k8s.io/kubectl module that
// k8s.io/kubernetes pins.
package main

import (
	"os"

	_ "k8s.io/client-go/plugin/pkg/client/auth" // auth provider plugins
	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	"k8s.io/kubectl/pkg/cmd"
	"k8s.io/kubectl/pkg/cmd/util"
)

func main() {
	logs.GlogSetter(cmd.GetLogVerbosity(os.Args)) //nolint:errcheck
	if err := cli.RunNoErrOutput(cmd.NewDefaultKubectlCommand()); err != nil {
		util.CheckErr(err)
	}
}
